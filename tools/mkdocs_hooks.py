"""MkDocs hook: Sphinx roles in the docstrings (:func:`x`, :class:`x`, ...) as code in the site.

mkdocstrings' Google-style parser leaves the roles as text (":func:" before the code);
a role naming an object documented on the same page becomes a link to it.
"""

import re

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):<code>~?([\w.]+)</code>")


def on_page_content(html, page, config, files):
    ids = set(re.findall(r'id="([\w.]+)"', html))

    def code(match):
        name = match.group(1)
        for target in (name, f"tf_bitpruning.{name}", f"tf_bitpruning.keras3.{name}"):
            if target in ids:
                return f'<a href="#{target}"><code>{name}</code></a>'
        return f"<code>{name}</code>"

    return ROLE.sub(code, html)
