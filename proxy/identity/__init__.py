"""Who is calling: bearer tokens (PATs, admin keys, JWTs, OAuth access tokens) become a Principal, or a 401.

May import the policy's model (roles, issuers, exclusions) and the base modules; never guards, the edge or ops.
"""
