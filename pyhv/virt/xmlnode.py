"""A small XML tree that remembers the line of every element, read with the stdlib's expat.

Domain XML errors must name the line of the element at fault (libvirt users edit these
files by hand). ``xml.etree`` drops line numbers, and lxml would make a C extension a
runtime dependency of pyhv; expat is in every Python, PyPy included, and reports the
position of each start tag, so the tree is built here from its callbacks.

Writing goes the other way: :func:`to_text` prints a tree the way libvirt does (two-space
indent, single-quoted attributes, ``<empty/>`` elements).
"""

from __future__ import annotations

from typing import Dict, List, Optional
from xml.parsers import expat

from ..errors import ConfigError


class XmlSyntaxError(ConfigError):
    """The document is not well-formed XML; the message carries line and column."""

    def __init__(self, source: str, line: int, column: int, problem: str) -> None:
        super().__init__(f"{source}: malformed XML at line {line}, column {column}: {problem}")
        self.line = line
        self.column = column


class XmlNode:
    """One element: tag, attributes, text (stripped) and children, plus where it started."""

    __slots__ = ("tag", "attrib", "text", "children", "line")

    def __init__(self, tag: str, attrib: Optional[Dict[str, str]] = None, text: str = "",
                 children: Optional[List["XmlNode"]] = None, line: int = 0) -> None:
        self.tag = tag
        self.attrib: Dict[str, str] = dict(attrib or {})
        self.text = text
        self.children: List[XmlNode] = list(children or [])
        self.line = line

    def add(self, tag: str, attrib: Optional[Dict[str, str]] = None, text: str = "") -> "XmlNode":
        child = XmlNode(tag, {k: v for k, v in (attrib or {}).items() if v is not None}, text)
        self.children.append(child)
        return child

    def find(self, tag: str) -> Optional["XmlNode"]:
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def __repr__(self) -> str:
        return f"<XmlNode {self.tag} line {self.line}>"


def parse(text: str, source: str = "XML") -> XmlNode:
    """The root element of ``text``; :class:`XmlSyntaxError` if it is not well-formed."""
    parser = expat.ParserCreate()
    stack: List[XmlNode] = []
    texts: List[List[str]] = []
    roots: List[XmlNode] = []

    def start(tag: str, attrib: Dict[str, str]) -> None:
        node = XmlNode(tag, attrib, line=parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            roots.append(node)
        stack.append(node)
        texts.append([])

    def end(_tag: str) -> None:
        node = stack.pop()
        node.text = "".join(texts.pop()).strip()

    def data(chunk: str) -> None:
        if texts:
            texts[-1].append(chunk)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    try:
        parser.Parse(text, True)
    except expat.ExpatError as err:
        raise XmlSyntaxError(source, err.lineno, err.offset + 1, expat.ErrorString(err.code)) from None
    if not roots:
        raise XmlSyntaxError(source, 1, 1, "no root element")
    return roots[0]


def _escape(text: str, quote: bool) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote:
        text = text.replace("'", "&apos;")
    return text


def to_text(node: XmlNode, indent: int = 0) -> str:
    """``node`` as libvirt prints it, with a trailing newline."""
    pad = "  " * indent
    attrs = "".join(f" {key}='{_escape(value, True)}'" for key, value in node.attrib.items())
    if node.children:
        inner = "".join(to_text(child, indent + 1) for child in node.children)
        return f"{pad}<{node.tag}{attrs}>\n{inner}{pad}</{node.tag}>\n"
    if node.text:
        return f"{pad}<{node.tag}{attrs}>{_escape(node.text, False)}</{node.tag}>\n"
    return f"{pad}<{node.tag}{attrs}/>\n"
