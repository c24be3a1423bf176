"""The policy file's model, the one pure decision over it, its explanation, and hot reload.

May import only the base modules: identity and the guards read the policy, the policy reads neither.
"""
