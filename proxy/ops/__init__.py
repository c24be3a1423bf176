"""Operations: Prometheus metrics, the audit trail, health endpoints and logs.

May import only the base modules; the edge reports into it.
"""
