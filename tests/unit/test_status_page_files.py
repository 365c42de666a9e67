"""The status page's files: assembled into one document, and their JavaScript unit-tested with node."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from app.status_page import StatusPage

REPO = Path(__file__).resolve().parents[2]


def test_page_inlines_the_package_files_with_the_nonce_everywhere() -> None:
    static = resources.files("app") / "static"
    html = StatusPage.from_package().render("n0nce")
    assert "__STATUS_" not in html and "__CSP_NONCE__" not in html
    assert html.count('nonce="n0nce"') == 2
    script = (static / "status.js").read_text(encoding="utf-8").rstrip("\n")
    style = (static / "status.css").read_text(encoding="utf-8").rstrip("\n")
    assert f'<script nonce="n0nce">\n{script}\n</script>' in html
    assert f'<style nonce="n0nce">\n{style}\n</style>' in html


def test_a_page_without_a_nonce_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match="__CSP_NONCE__"):
        StatusPage("<html><script>1</script></html>")


@pytest.mark.integration  # starts a process
def test_status_script_unit_tests_pass_under_node() -> None:
    node = shutil.which("node")
    assert node, "node is needed for the status page's script tests (apt-get install nodejs)"
    files = sorted(str(path) for path in (REPO / "tests" / "js").glob("*.test.js"))
    assert files
    result = subprocess.run(
        [node, "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
