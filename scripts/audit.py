"""Known vulnerabilities in what omnipush installs: the Python environment and the npm lock.

`pip-audit` checks the installed packages (the exact versions of constraints.txt, without the
editable omnipush itself) and `npm audit --omit=dev` the browser assets' lock. Any known
vulnerability fails. A vulnerability service that does not answer is reported as such, never as
"no known vulnerabilities"; it fails only with `--require-service` (`make audit`), because
`make test` must still run where only the package registries are reachable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Audit:
    """What one auditor found: vulnerable packages, and why some could not be checked."""

    tool: str
    vulnerable: list[str] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)


def read_pip_audit(report: dict[str, Any]) -> Audit:
    """The findings of `pip-audit -f json`."""
    audit = Audit("pip-audit")
    for dependency in report.get("dependencies", []):
        name = f"{dependency['name']} {dependency.get('version', '')}".strip()
        if "skip_reason" in dependency:
            audit.unaudited.append(f"{name}: {dependency['skip_reason']}")
        for vuln in dependency.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            audit.vulnerable.append(f"{name}: {vuln['id']} (fixed in {fixed})")
    return audit


def read_npm_audit(report: dict[str, Any]) -> Audit:
    """The findings of `npm audit --json` (an error object when the registry refused)."""
    audit = Audit("npm audit")
    if "auditReportVersion" not in report:
        reason = report.get("message") or report.get("error", {}).get("summary") or "no report"
        audit.unaudited.append(f"the npm advisory service did not answer: {reason}")
        return audit
    for name, found in sorted(report.get("vulnerabilities", {}).items()):
        vias = found.get("via", [])
        advisories = [
            via.get("url") or via.get("title", "?") for via in vias if isinstance(via, dict)
        ]
        advisories += [f"through {via}" for via in vias if isinstance(via, str)]
        audit.vulnerable.append(
            f"{name} {found.get('range', '')}: {found.get('severity', '?')} {', '.join(advisories)}"
        )
    return audit


def run_pip_audit() -> Audit:
    result = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--skip-editable", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return read_pip_audit(_json_or_error(result, "pip-audit"))


def run_npm_audit() -> Audit:
    result = subprocess.run(
        ["npm", "audit", "--omit=dev", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    return read_npm_audit(_json_or_error(result, "npm audit"))


def _json_or_error(result: subprocess.CompletedProcess[str], tool: str) -> dict[str, Any]:
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"message": f"{tool} failed: {last_line}"}
    return report if isinstance(report, dict) else {"message": f"{tool} printed {report!r}"}


def verdict(audits: list[Audit], require_service: bool) -> int:
    """Print what was found; the exit status."""
    status = 0
    for audit in audits:
        for line in audit.vulnerable:
            print(f"audit: {audit.tool}: VULNERABLE {line}", file=sys.stderr)
        if audit.vulnerable:
            status = 1
        if audit.unaudited:
            word = "FAILED" if require_service else "WARNING"
            more = len(audit.unaudited) - 1
            print(
                f"audit: {audit.tool}: {word}: not checked: {audit.unaudited[0]}"
                + (f" (and {more} more)" if more else ""),
                file=sys.stderr,
            )
            if require_service:
                status = 1
        elif not audit.vulnerable:
            print(f"audit: {audit.tool}: no known vulnerabilities", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--require-service",
        action="store_true",
        help="fail when a vulnerability service cannot be reached, not only on a vulnerability",
    )
    args = parser.parse_args(argv)
    return verdict([run_pip_audit(), run_npm_audit()], args.require_service)


if __name__ == "__main__":
    sys.exit(main())
