"""``wimse-verify``: check one access token, print its levels and why.

Uses argparse and the verifier alone, so it runs where only PyJWT and
cryptography are installed. It prints the verified claims, never the token.

Exit status: 0 verified (and every requirement met), 1 verification
failed (including keys that could not be fetched), 2 a requirement is
unmet, 64 bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from .errors import VerifierError
from .levels import Requirement, load_scheme
from .requirements import InsufficientAssurance, parse_requirement_items
from .token import TokenVerifier, VerifiedToken

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNMET = 2
EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    # argparse exits with 2 on a usage error, which here means "requirement
    # unmet"; usage errors get EX_USAGE (64) instead.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="wimse-verify",
        description="Verify a wimse-assurance access token and print its levels.",
    )
    p.add_argument("token", help="the access token, or - to read it from stdin")
    p.add_argument("--issuer", required=True, help="expected issuer identifier")
    p.add_argument(
        "--audience", required=True, action="append", help="expected audience"
    )
    p.add_argument("--require-mial", type=int, default=0, metavar="N")
    p.add_argument("--require-maal", type=int, default=0, metavar="N")
    p.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="ITEM",
        help="e.g. maal.containment>=2, mial>=2 or max_age=3600 (repeatable)",
    )
    p.add_argument(
        "--allow-http",
        action="store_true",
        help="accept a plain http issuer (loopback development only)",
    )
    p.add_argument("--jwks", metavar="FILE", help="JWK Set file instead of fetching")
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        help="PEM CA bundle for an issuer served under a private CA",
    )
    p.add_argument("--leeway", type=int, default=30, help="clock skew, seconds")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _requirement(args: argparse.Namespace) -> Requirement:
    items = list(args.require)
    if args.require_mial:
        items.append(f"mial>={args.require_mial}")
    if args.require_maal:
        items.append(f"maal>={args.require_maal}")
    return parse_requirement_items(items)


def _report(verified: VerifiedToken) -> dict[str, Any]:
    scheme = load_scheme(verified.scheme)
    levels: dict[str, Any] = {}
    for kind, level, vector in (
        ("mial", verified.mial, verified.mial_vector),
        ("maal", verified.maal, verified.maal_vector),
    ):
        table = scheme.mial if kind == "mial" else scheme.maal
        capped = [s.describe() for s in table.shortfalls(vector, level + 1)]
        levels[kind] = {
            "level": level,
            "asserted": verified.claims[kind],
            "dimensions": dict(vector),
            "next_level_blocked_by": capped if level < table.top else [],
        }
    return {
        "claims": dict(verified.claims),
        "presentation": verified.presentation,
        "levels": levels,
        "adjustments": [
            {
                "item": a.item,
                "asserted": a.asserted,
                "effective": a.effective,
                "reason": a.reason,
            }
            for a in verified.adjustments
        ],
        "appraisal_age": verified.appraisal_age(),
    }


def _print_text(report: dict[str, Any], out: TextIO) -> None:
    claims = report["claims"]
    for name in ("iss", "sub", "aud", "client_id", "jti", "scope", "iat", "exp"):
        if name in claims:
            out.write(f"{name}: {json.dumps(claims[name])}\n")
    out.write(f"presented as: {report['presentation']}\n")
    out.write(f"appraisal age: {report['appraisal_age']}s\n")
    for kind, data in report["levels"].items():
        out.write(f"{kind} = {data['level']} (token says {data['asserted']})\n")
        for dim, value in data["dimensions"].items():
            out.write(f"  {kind}.{dim} = {value}\n")
        for text in data["next_level_blocked_by"]:
            out.write(f"  {kind} {data['level'] + 1} not reached: {text}\n")
    for adj in report["adjustments"]:
        out.write(
            f"lowered {adj['item']} {adj['asserted']} -> {adj['effective']}: "
            f"{adj['reason']}\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wimse-verify``; return the exit status (see module docstring)."""
    args = _parser().parse_args(argv)
    source: str = args.token
    raw = sys.stdin.readline().strip() if source == "-" else source
    try:
        requirement = _requirement(args)
        jwks = None
        if args.jwks:
            with open(args.jwks, encoding="utf-8") as fh:
                jwks = json.load(fh)
        verifier = TokenVerifier(
            args.issuer,
            args.audience,
            jwks=jwks,
            allow_http=args.allow_http,
            leeway=args.leeway,
            ca_file=args.ca_file,
        )
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"wimse-verify: {exc}\n")
        return EXIT_USAGE
    except VerifierError as exc:
        sys.stderr.write(f"wimse-verify: {type(exc).__name__}: {exc}\n")
        return EXIT_INVALID

    try:
        verified = verifier.verify(raw)
    except VerifierError as exc:
        sys.stderr.write(f"refused: {type(exc).__name__}: {exc}\n")
        return EXIT_INVALID

    report = _report(verified)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        _print_text(report, sys.stdout)

    try:
        verified.require(requirement)
    except InsufficientAssurance as exc:
        sys.stderr.write(
            f"requirement unmet: {'; '.join(s.describe() for s in exc.unmet)}\n"
        )
        sys.stderr.write(f"challenge: {exc.www_authenticate()}\n")
        return EXIT_UNMET
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
