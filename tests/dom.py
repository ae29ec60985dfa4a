"""Just enough of a DOM to assert on a page a browser serialized: elements with their tag,
attributes, children and text, found by tag, class and attributes. Standard library only
(html.parser); the browser did the real parsing, this reads its output back."""
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Element:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children = []  # Elements and strings, in order

    @property
    def classes(self):
        return set((self.attrs.get("class") or "").split())

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def find_all(self, tag=None, classes=(), **attrs):
        """Descendants with this tag (any when None), all of `classes`, and these attribute
        values (data_kind="daily" matches data-kind)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.iter()
                if (tag is None or e.tag == tag) and set(classes) <= e.classes
                and all(e.attrs.get(k) == v for k, v in wanted.items())]

    def find(self, tag=None, classes=(), **attrs):
        found = self.find_all(tag, classes, **attrs)
        assert found, f"no <{tag or '*'}> with classes {set(classes) or '{}'} and {attrs}"
        return found[0]

    def by_id(self, ident):
        return self.find(id=ident)


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {})

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, attrs, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(markup):
    builder = _Builder()
    builder.feed(markup)
    builder.close()
    return builder.root
