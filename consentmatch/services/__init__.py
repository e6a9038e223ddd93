"""The gallery's jobs, one module each, over a shared `Context` (context.py); `Gallery` only wires them.

consents (grant, read, revoke), enrollment (enroll, import), matching (match, verify),
erasure (the one erasure sequence: forget, retention and purge, opt-outs), governance
(policy, audit, export, keys, subjects). Each is plain functions taking the context first.
"""
