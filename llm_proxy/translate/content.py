"""Content pieces: OpenAI message parts <-> Anthropic content blocks.

Images travel both ways (data: URLs <-> base64 sources, http URLs <-> url
sources) and inline PDFs become document blocks and back. Kinds the other
API cannot take (audio, uploaded-file ids, Anthropic Files API sources) are
dropped rather than sent to fail the request.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def texts(content: Any, sep: str = "\n\n") -> str:
    """Text of a string or of the text parts/blocks of a list (other kinds ignored)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = [p.get("refusal" if p.get("type") == "refusal" else "text") for p in content if isinstance(p, dict)]
    return sep.join(t for t in parts if isinstance(t, str) and t)


def tool_id(value: Any) -> str:
    """A tool call id Anthropic accepts (`^[a-zA-Z0-9_-]+$`).

    OpenAI-compatible servers sometimes use ids such as `functions.get:0`;
    the same cleaning is applied to `tool_use.id` and `tool_result.tool_use_id`
    so the pair still matches.
    """
    cleaned = _TOOL_ID_BAD.sub("_", value) if isinstance(value, str) else ""
    return cleaned or "toolu_missing"


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as an Anthropic `input` object; bad JSON -> {}.

    Anthropic requires `input` to be an object, so a model's malformed or
    non-object arguments cannot be passed on and become empty.
    """
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """A tool_use block as an OpenAI tool call (arguments are a JSON string there)."""
    return {
        "id": block.get("id") or "",
        "type": "function",
        "function": {"name": block.get("name") or "", "arguments": json.dumps(block.get("input") or {})},
    }


# --- OpenAI parts -> Anthropic blocks ------------------------------------------------


def _data_url_source(url: str) -> dict[str, Any] | None:
    """A data: URL as an Anthropic base64 source (percent-encoded data is re-encoded)."""
    m = _DATA_URL.fullmatch(url)
    if m is None:
        return None
    media_type = m["type"] or "image/png"
    data = m["data"]
    if ";base64" not in m["params"]:
        data = base64.b64encode(unquote_to_bytes(data)).decode("ascii")
    return {"type": "base64", "media_type": media_type, "data": data}


def _image_block(part: dict[str, Any]) -> dict[str, Any] | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        source = _data_url_source(url)
        return {"type": "image", "source": source} if source else None
    return {"type": "image", "source": {"type": "url", "url": url}}


def _file_block(part: dict[str, Any]) -> dict[str, Any] | None:
    """Inline PDFs become document blocks; uploaded `file_id`s live at OpenAI and are dropped."""
    file = part.get("file") if isinstance(part.get("file"), dict) else {}
    data = file.get("file_data")
    source = _data_url_source(data) if isinstance(data, str) and data.startswith("data:") else None
    if source is None or source["media_type"] != "application/pdf":
        return None  # Anthropic's base64 documents are PDFs only
    return {"type": "document", "source": source}


def chat_parts_to_blocks(content: Any) -> list[dict[str, Any]]:
    """User/assistant content (string or parts) as Anthropic blocks; empty text is skipped.

    Anthropic rejects empty text blocks, and audio parts have no equivalent.
    """
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        block: dict[str, Any] | None = None
        if kind == "text" and part.get("text"):
            block = {"type": "text", "text": part["text"]}
        elif kind == "refusal" and part.get("refusal"):
            block = {"type": "text", "text": part["refusal"]}
        elif kind == "image_url":
            block = _image_block(part)
        elif kind == "file":
            block = _file_block(part)
        if block is not None:
            blocks.append(block)
    return blocks


# --- Anthropic blocks -> OpenAI parts ------------------------------------------------


def image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        return None  # Files API sources live at Anthropic
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64":
        data = f"data:{source.get('media_type') or 'application/pdf'};base64,{source.get('data') or ''}"
        return {"type": "file", "file": {"filename": block.get("title") or "document.pdf", "file_data": data}}
    if source.get("type") == "text" and source.get("data"):
        return {"type": "text", "text": source["data"]}
    return None


def user_part(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text" and block.get("text"):
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return image_part(block)
    if kind == "document":
        return _document_part(block)
    return None


def parts_content(parts: list[dict[str, Any]]) -> Any:
    """A lone text part as a plain string: every OpenAI-compatible server accepts that form."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts
