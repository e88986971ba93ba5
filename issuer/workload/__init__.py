"""The workload side of attestation: collect evidence the issuer verifies.

``tpm`` drives a TPM 2.0 through the ``tpm2-tools`` commands. This package
imports no web framework and never talks to the issuer itself.
"""
