"""A Griffe extension for this site: the docstrings' Sphinx roles as Markdown code.

pclab's docstrings name code with reStructuredText roles (:class:`~pclab.core.relax.Inference`,
:func:`relax`) and end a paragraph with ``::`` before an example. mkdocstrings renders Markdown, where
those show up literally, so each role becomes a code span (``~`` keeps the last dotted part, as Sphinx
does) and ``::`` a colon.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"(\S)::$", re.MULTILINE)


def markdown(text: str) -> str:
    """``text`` with every Sphinx role written as a Markdown code span and ``::`` as ``:``."""
    text = ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return LITERAL_BLOCK.sub(r"\1:", text)


class SphinxRoles(griffe.Extension):
    """Rewrite each object's docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
