"""A griffe extension for the API reference: Sphinx roles in docstrings read as code.

The package's docstrings name other objects Sphinx-style (``:class:`KeyMap```,
``:func:`load_mmcv_state_dict```); Markdown would show the role's colons. This turns
``:role:`~path.Name``` into ```` `Name` ```` (the last component after a ``~``, as
Sphinx writes it) before mkdocstrings renders the docstring.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    target = match[2]
    return f"`{target.rsplit('.', 1)[-1] if match[1] else target}`"


class SphinxRolesAsCode(Extension):
    """Rewrite Sphinx cross-reference roles in every docstring as inline code."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
