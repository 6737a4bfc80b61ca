"""scripts/audit.py, the vulnerability check of `make test`: a known vulnerability fails, and a
service that cannot answer is never taken for "no known vulnerabilities"."""

from __future__ import annotations

from typing import Any

import pytest

from scripts import audit

# `pip-audit -f json` on an environment with Jinja2 3.1.5, and one whose service did not answer.
PIP_VULNERABLE: dict[str, Any] = {
    "dependencies": [
        {"name": "flask", "version": "3.1.3", "vulns": []},
        {
            "name": "jinja2",
            "version": "3.1.5",
            "vulns": [
                {
                    "id": "GHSA-cpwx-vrp4-4pq7",
                    "fix_versions": ["3.1.6"],
                    "aliases": ["CVE-2025-27516"],
                    "description": "sandbox escape through |attr",
                }
            ],
        },
    ],
    "fixes": [],
}
PIP_UNANSWERED: dict[str, Any] = {
    "dependencies": [
        {
            "name": "flask",
            "skip_reason": "Dependency not found on PyPI and could not be audited: flask (3.1.3)",
        }
    ],
    "fixes": [],
}
PIP_CLEAN: dict[str, Any] = {
    "dependencies": [{"name": "flask", "version": "3.1.3", "vulns": []}],
    "fixes": [],
}
# `npm audit --json` with an advisory, and the registry's refusal.
NPM_VULNERABLE: dict[str, Any] = {
    "auditReportVersion": 2,
    "vulnerabilities": {
        "socket.io-parser": {
            "name": "socket.io-parser",
            "severity": "high",
            "via": [{"title": "Insufficient validation", "url": "https://example.test/GHSA-1"}],
            "range": "<4.2.3",
        },
        "socket.io-client": {
            "name": "socket.io-client",
            "severity": "high",
            "via": ["socket.io-parser"],
            "range": "<4.6.2",
        },
    },
}
NPM_REFUSED: dict[str, Any] = {
    "message": "405 Method Not Allowed - POST https://registry.example/-/npm/v1/security/advisories/bulk",
    "error": {"summary": "", "detail": ""},
}
NPM_CLEAN: dict[str, Any] = {"auditReportVersion": 2, "vulnerabilities": {}}


def test_a_known_python_vulnerability_fails(capsys: pytest.CaptureFixture[str]) -> None:
    found = audit.read_pip_audit(PIP_VULNERABLE)
    assert audit.verdict([found, audit.read_npm_audit(NPM_CLEAN)], require_service=False) == 1
    assert "jinja2 3.1.5: GHSA-cpwx-vrp4-4pq7 (fixed in 3.1.6)" in capsys.readouterr().err


def test_a_known_npm_vulnerability_fails(capsys: pytest.CaptureFixture[str]) -> None:
    found = audit.read_npm_audit(NPM_VULNERABLE)
    assert audit.verdict([audit.read_pip_audit(PIP_CLEAN), found], require_service=False) == 1
    err = capsys.readouterr().err
    assert "socket.io-parser <4.2.3: high https://example.test/GHSA-1" in err
    assert "socket.io-client <4.6.2: high through socket.io-parser" in err


@pytest.mark.parametrize("require_service", [False, True])
def test_an_unanswered_audit_is_said_and_fails_only_when_required(
    require_service: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    found = [audit.read_pip_audit(PIP_UNANSWERED), audit.read_npm_audit(NPM_REFUSED)]
    assert audit.verdict(found, require_service=require_service) == int(require_service)
    err = capsys.readouterr().err
    assert "no known vulnerabilities" not in err
    assert "pip-audit: " + ("FAILED" if require_service else "WARNING") + ": not checked" in err
    assert "npm advisory service did not answer: 405" in err


def test_a_clean_audit_passes(capsys: pytest.CaptureFixture[str]) -> None:
    found = [audit.read_pip_audit(PIP_CLEAN), audit.read_npm_audit(NPM_CLEAN)]
    assert audit.verdict(found, require_service=True) == 0
    assert capsys.readouterr().err.count("no known vulnerabilities") == 2
