"""Self-contained HTML reports: headings, text, tables, code and figures in one file.

Figures are embedded as base64 PNG (``<img src="data:image/png;base64,...">``), so the
report can be mailed or opened anywhere without the files next to it. All text is
HTML-escaped; nothing in a report runs script.

    rep = Report("RNNsearch vs RNNenc", subtitle="German to English")
    rep.heading("Scores")
    rep.table(["model", "BLEU"], [["rnnsearch", "12.3"], ["rnnenc", "6.1"]])
    rep.figure(fig, caption="alignment of sentence 1")   # a matplotlib Figure, PNG bytes or a .png path
    rep.save("runs/demo/report.html")
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Sequence

from .._io import write_text_atomic

__all__ = ["Report", "png_bytes"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .subtitle { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; }
"""


def png_bytes(image, *, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib Figure, of PNG bytes (checked), or of a ``.png`` file path."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r}: no such file")
        data = path.read_bytes()
    elif hasattr(image, "savefig"):
        buf = io.BytesIO()
        image.savefig(buf, format="png", dpi=dpi)
        data = buf.getvalue()
    else:
        raise TypeError(f"image must be a matplotlib Figure, PNG bytes or a path to a PNG file, got {type(image).__name__}")
    if not data.startswith(PNG_MAGIC):
        raise ValueError("image is not a PNG (it does not start with the PNG signature)")
    return data


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, str):
        try:
            float(value.replace(",", "").removesuffix(" M").removesuffix("%"))
            return True
        except ValueError:
            return False
    return False


class Report:
    """An HTML document built block by block; :meth:`to_html` renders it, :meth:`save` writes it.

    Args:
        title: the page title and top heading.
        subtitle: an optional line under the title.
    """

    def __init__(self, title: str, subtitle: str | None = None):
        if not isinstance(title, str) or not title.strip():
            raise ValueError("title must be a non-empty string")
        self.title = title
        self.subtitle = subtitle
        self._blocks: list[str] = []

    def heading(self, text: str, level: int = 2) -> "Report":
        """A section heading (``level`` 2 to 4)."""
        if level not in (2, 3, 4):
            raise ValueError(f"level must be 2, 3 or 4 (1 is the title), got {level!r}")
        self._blocks.append(f"<h{level}>{html.escape(str(text))}</h{level}>")
        return self

    def paragraph(self, text: str) -> "Report":
        """A paragraph of plain text."""
        self._blocks.append(f"<p>{html.escape(str(text))}</p>")
        return self

    def code(self, text: str) -> "Report":
        """Preformatted text (commands, program output)."""
        self._blocks.append(f"<pre>{html.escape(str(text))}</pre>")
        return self

    def table(self, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> "Report":
        """A table; every row must have as many cells as ``header``. Numbers align right."""
        header = list(header)
        if not header:
            raise ValueError("header must name at least one column")
        lines = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
        for i, row in enumerate(rows):
            row = list(row)
            if len(row) != len(header):
                raise ValueError(f"rows[{i}] has {len(row)} cells but header has {len(header)} columns")
            cells = "".join(
                f'<td class="num">{html.escape(str(c))}</td>' if _is_number(c) else f"<td>{html.escape(str(c))}</td>"
                for c in row
            )
            lines.append(f"<tr>{cells}</tr>")
        lines.append("</table>")
        self._blocks.append("\n".join(lines))
        return self

    def figure(self, image, caption: str | None = None, *, alt: str | None = None) -> "Report":
        """An image embedded as base64 PNG: a matplotlib Figure, PNG bytes or a ``.png`` path."""
        data = base64.b64encode(png_bytes(image)).decode("ascii")
        alt_text = html.escape(alt if alt is not None else (caption or "figure"), quote=True)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._blocks.append(f'<figure><img alt="{alt_text}" src="data:image/png;base64,{data}">{cap}</figure>')
        return self

    def to_html(self) -> str:
        """The whole document as a string."""
        sub = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        body = "\n".join(self._blocks)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{sub}\n{body}\n</body>\n</html>\n"
        )

    def save(self, path) -> Path:
        """Write the report to ``path`` atomically (temporary file, then rename); returns the path."""
        path = Path(path)
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot save the report to {str(path)!r}: folder {str(folder)!r} does not exist")
        write_text_atomic(self.to_html(), path)
        return path
