"""Pages carry no inline scripts (each page's script is a file under static/app/), and every
script or stylesheet a template names is served from this server."""

import re
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def test_no_inline_scripts_and_no_external_assets():
    for path in TEMPLATES.rglob("*.html"):
        html = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, f"{path}: inline <script> (move it to static/app/)"
            assert "{% static" in tag, f"{path}: {tag} is not served from static/"
        assert not re.search(r"\son[a-z]+=\"", html), f"{path}: inline event handler"
