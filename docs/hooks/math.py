"""mkdocs hook: the pages' LaTeX becomes MathML at build time, so no script renders it.

``pymdownx.arithmatex`` (generic mode) marks ``$...$`` and ``$$...$$`` outside code as
``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``;
this hook converts each with latex2mathml. Browsers draw MathML natively, so the site
needs no MathJax or KaTeX download and works offline. A formula latex2mathml cannot
convert fails the build with the formula and the page named.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)


def _converter(page: Any, display: str):
    def mathml(match: re.Match[str]) -> str:
        latex = html.unescape(match[1]).strip()
        try:
            return convert(latex, display=display)
        except Exception as error:  # latex2mathml raises several exception types
            raise PluginError(f"{page.file.src_uri}: cannot convert ${latex}$: {error}") from error

    return mathml


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    html_text = _BLOCK.sub(_converter(page, "block"), html_text)
    return _INLINE.sub(_converter(page, "inline"), html_text)
