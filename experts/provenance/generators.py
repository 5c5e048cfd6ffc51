"""Generator metadata: what image generators and their web UIs write into the files they save
(PNG text, EXIF). None of it is signed (NovelAI's signature is checked in
experts.provenance.novelai), so a finding here is a claim: it names a generator and, where the
metadata does, a model; anyone can write it, and anyone can strip it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from coe.core.records import ProvenanceFinding
from experts.provenance.exif import ExifFields

FIELD_CHARS = 300  # how much of one raw field a finding keeps

# The last line of an AUTOMATIC1111-style `parameters` text: "Steps: 20, Sampler: Euler a, ...",
# read no longer than this (hundreds of LoRA hashes fit) and with keys no longer than 60
# characters, so that a hostile text costs linear time.
_A1111_SETTINGS_CHARS = 65536
_A1111_SETTING = re.compile(r'\s*([A-Za-z][\w /\-]{0,60}):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')
_MIDJOURNEY_JOB = re.compile(r"Job ID:\s*([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})")
_MIDJOURNEY_VERSION = re.compile(r"--(v|version|niji)\s+([\d.]+)")
_COMFYUI_MODEL_INPUTS = ("ckpt_name", "unet_name", "model_name")
XMP_DESCRIPTION = "xmp:dc:description"  # the key under which the readers get XMP's description


def truncated(value: str) -> str:
    return value if len(value) <= FIELD_CHARS else value[:FIELD_CHARS] + "…"


def _json(text: str):
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _claim(source: str, generator: str, model: str | None, where: str, fields: dict[str, str]) -> ProvenanceFinding:
    model = model.strip() if isinstance(model, str) and model.strip() else None
    return ProvenanceFinding(
        source=source, grade="claim", says="generated", generator=generator, model=model,
        detail=f"{where} names {generator}" + (f" (model {model})" if model else ""),
        fields={"where": where, **{key: truncated(value) for key, value in fields.items() if value}},
    )


def generator_findings(texts: dict[str, str], exif: ExifFields, where: str) -> list[ProvenanceFinding]:
    """Every generator the file's text and EXIF name. `where` names the container ("PNG")."""
    findings: list[ProvenanceFinding] = []
    for reader in _READERS:
        finding = reader(texts, exif, where)
        if finding is not None:
            findings.append(finding)
    return findings


def a1111_settings_line(text: str) -> str | None:
    line = text.rstrip()[-_A1111_SETTINGS_CHARS:].rsplit("\n", 1)[-1]
    return line if re.match(r"Steps: \d+,", line) else None


def a1111_settings(text: str) -> dict[str, str] | None:
    """The settings line of an AUTOMATIC1111-style `parameters` text, as key -> value; None when
    the text is not one."""
    line = a1111_settings_line(text)
    if line is None:
        return None
    return {key.strip(): value.strip().strip('"') for key, value in _A1111_SETTING.findall(line)}


def _parameters_text(texts: dict[str, str], exif: ExifFields, where: str) -> tuple[str, str] | None:
    """AUTOMATIC1111 writes `parameters` as PNG text, and as EXIF UserComment in JPEG and WebP."""
    if "parameters" in texts:
        return texts["parameters"], f"{where} text 'parameters'"
    if exif.get("UserComment"):
        return exif.get("UserComment"), f"{where} EXIF UserComment"
    if "comment" in texts:
        return texts["comment"], f"{where} comment"
    return None


def _a1111(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """AUTOMATIC1111 and its forks (Forge, SD.Next) write the prompt, `Negative prompt: ...` and a
    settings line; Forge's `Version` starts with "f" and a digit, Fooocus's with "Fooocus"."""
    found = _parameters_text(texts, exif, where)
    settings = a1111_settings(found[0]) if found else None
    if settings is None:
        return None
    version = settings.get("Version", "")
    if version.startswith("Fooocus"):
        return None  # Fooocus's own reader names it
    generator = "Stable Diffusion WebUI Forge" if re.match(r"f\d", version) else "AUTOMATIC1111 Stable Diffusion web UI"
    model = settings.get("Model") or settings.get("Model hash")
    return _claim("a1111", generator, model, found[1],
                  {"settings": a1111_settings_line(found[0]) or "", "version": version})


def _fooocus(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """Fooocus writes `parameters` either as JSON (its own scheme, `fooocus_scheme` beside it) or
    in AUTOMATIC1111's form with a "Fooocus" version; in JPEG and WebP, Software says Fooocus."""
    found = _parameters_text(texts, exif, where)
    if found is None and "Fooocus" not in exif.get("Software"):
        return None
    text, place = found or ("", f"{where} EXIF Software")
    data = _json(text)
    if isinstance(data, dict) and (
        str(data.get("version", data.get("Version", ""))).startswith("Fooocus") or "fooocus_scheme" in texts
    ):
        model = data.get("base_model") or data.get("Base Model")
        return _claim("fooocus", "Fooocus", str(model) if model else None, place,
                      {"version": str(data.get("version", data.get("Version", "")))})
    settings = a1111_settings(text) if text else None
    if settings is not None and settings.get("Version", "").startswith("Fooocus"):
        return _claim("fooocus", "Fooocus", settings.get("Model") or settings.get("Base Model"), place,
                      {"version": settings["Version"]})
    if exif.get("Software").startswith("Fooocus"):
        return _claim("fooocus", "Fooocus", None, f"{where} EXIF Software", {"software": exif.get("Software")})
    return None


def _comfyui(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """ComfyUI saves its node graph: PNG text `prompt` (the executed graph, nodes by id with a
    `class_type`) and `workflow` (the editor's graph); in WebP, EXIF tags holding "prompt:{...}" and
    "workflow:{...}"."""
    prompt, workflow, place = texts.get("prompt"), texts.get("workflow"), f"{where} text 'prompt'/'workflow'"
    if prompt is None and workflow is None:
        for name in ("Model", "Make", "ImageDescription"):
            value = exif.get(name)
            if value.startswith("prompt:"):
                prompt, place = value[len("prompt:") :], f"{where} EXIF {name}"
            elif value.startswith("workflow:"):
                workflow, place = value[len("workflow:") :], f"{where} EXIF {name}"
    graph = _json(prompt) if prompt is not None else None
    editor = _json(workflow) if workflow is not None else None
    nodes = [node for node in graph.values() if isinstance(node, dict)] if isinstance(graph, dict) else []
    if not any("class_type" in node for node in nodes) and not (isinstance(editor, dict) and "nodes" in editor):
        return None
    models = [
        str(node.get("inputs", {}).get(key))
        for node in nodes
        if isinstance(node.get("inputs"), dict)
        for key in _COMFYUI_MODEL_INPUTS
        if isinstance(node["inputs"].get(key), str)
    ]
    classes = sorted({str(node.get("class_type")) for node in nodes if "class_type" in node})
    return _claim("comfyui", "ComfyUI", models[0] if models else None, place,
                  {"nodes": ", ".join(classes), "models": ", ".join(models)})


def _invokeai(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """InvokeAI: `invokeai_metadata` (JSON, 3.x on), `sd-metadata` (JSON, 2.x), `Dream` (a
    command line, 1.x)."""
    metadata = _json(texts.get("invokeai_metadata", ""))
    if isinstance(metadata, dict):
        model = metadata.get("model")
        if isinstance(model, dict):
            model = model.get("name") or model.get("model_name") or model.get("key")
        return _claim("invokeai", "InvokeAI", str(model) if model else None, f"{where} text 'invokeai_metadata'",
                      {"app_version": str(metadata.get("app_version", "")),
                       "generation_mode": str(metadata.get("generation_mode", ""))})
    legacy = _json(texts.get("sd-metadata", ""))
    if isinstance(legacy, dict):
        model = legacy.get("model_weights") or legacy.get("model")
        return _claim("invokeai", "InvokeAI", str(model) if model else None, f"{where} text 'sd-metadata'",
                      {"app_id": str(legacy.get("app_id", "")), "app_version": str(legacy.get("app_version", ""))})
    if "Dream" in texts:
        return _claim("invokeai", "InvokeAI (Dream)", None, f"{where} text 'Dream'", {"dream": texts["Dream"]})
    return None


def _novelai(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """NovelAI: PNG text Software "NovelAI", Source (the model), Comment (JSON settings, with the
    `signed_hash` signature); in WebP, EXIF Software holds the model and UserComment the Comment."""
    comment = _json(texts.get("Comment", "") or exif.get("UserComment"))
    says_novelai = texts.get("Software", "").startswith("NovelAI") or "NovelAI" in exif.get("Software")
    if not says_novelai and not (isinstance(comment, dict) and "signed_hash" in comment):
        return None
    model = texts.get("Source") or exif.get("Software")
    fields = {"software": texts.get("Software", ""), "source": model}
    if isinstance(comment, dict):
        fields["comment_keys"] = ", ".join(sorted(comment)[:20])
    return _claim("novelai", "NovelAI", model, f"{where} text 'Software'/'Comment'" if texts.get("Software")
                  else f"{where} EXIF", fields)


def _midjourney(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """Midjourney writes the prompt with its flags and "Job ID: <uuid>" as the description."""
    for place, text in ((f"{where} text 'Description'", texts.get("Description", "")),
                        (f"{where} EXIF ImageDescription", exif.get("ImageDescription")),
                        (f"{where} XMP dc:description", texts.get(XMP_DESCRIPTION, ""))):
        job = _MIDJOURNEY_JOB.search(text)
        if job:
            version = _MIDJOURNEY_VERSION.search(text)
            model = f"{'niji' if version.group(1) == 'niji' else 'v'} {version.group(2)}" if version else None
            return _claim("midjourney", "Midjourney", model, place, {"job_id": job.group(1)})
    return None


def _flux(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """Black Forest Labs' FLUX reference code writes Make "Black Forest Labs", the model's name as
    Model, "AI generated;..." as Software and the prompt as ImageDescription."""
    if exif.get("Make") != "Black Forest Labs":
        return None
    return _claim("flux", "FLUX (Black Forest Labs)", exif.get("Model"), f"{where} EXIF Make",
                  {"make": exif.get("Make"), "model": exif.get("Model"), "software": exif.get("Software")})


def _openai(texts: dict[str, str], exif: ExifFields, where: str) -> ProvenanceFinding | None:
    """OpenAI's image generation (DALL-E) writes "Made with OpenAI ..." as UserComment and an
    "OpenAI--ImageGeneration--<id>" MakerNote."""
    tags = {name: exif.get(name) for name in ("UserComment", "MakerNote", "ImageDescription", "Software")}
    if not any("Made with OpenAI" in value or value.startswith("OpenAI--") for value in tags.values()):
        return None
    return _claim("openai_exif", "OpenAI", None, f"{where} EXIF", tags)


_READERS: tuple[Callable[[dict[str, str], ExifFields, str], ProvenanceFinding | None], ...] = (
    _a1111, _fooocus, _comfyui, _invokeai, _novelai, _midjourney, _flux, _openai,
)
