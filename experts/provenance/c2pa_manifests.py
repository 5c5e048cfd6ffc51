"""C2PA Content Credentials through the official binding (c2pa-python, around c2pa-rs), offline:
remote manifests are never fetched, nor OCSP responses. Trust comes only from the configured
lists (C2PAParams): the shipped ones by default (experts/provenance/trust/), or a user's own.

A Trusted manifest is proof, a Valid but untrusted one a claim, an Invalid one no evidence
either way (early camera manifests fail today's validation): it is reported, never read as fake."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from coe.core.errors import UserError
from coe.core.records import EvidenceGrade, ProvenanceFinding, ProvenanceSays
from experts.provenance.generators import truncated
from experts.provenance.xmp import source_type_name, source_type_says

SHIPPED = "shipped:"  # a trust file named so is one of the lists shipped in experts/provenance/trust/
_STATE_GRADE: dict[str, EvidenceGrade] = {"trusted": "proof", "valid": "claim", "invalid": "none"}
_ORIGIN_ACTIONS = ("c2pa.created", "c2pa.opened")
_MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff",
               "avif": "image/avif", "heic": "image/heic", "heif": "image/heif", "gif": "image/gif"}
_MAX_INGREDIENT_DEPTH = 8


class C2PAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    trust_anchors: list[str] = Field(
        default=[f"{SHIPPED}C2PA-TRUST-LIST.pem", f"{SHIPPED}interim_anchors.pem"],
        description="PEM files of root certificates a Trusted manifest's signer chains to",
    )
    allowed_list: list[str] = Field(
        default=[f"{SHIPPED}interim_allowed.pem"],
        description="PEM files of end-entity certificates trusted as they are",
    )
    trust_config: str | None = Field(
        default=f"{SHIPPED}interim_store.cfg", description="the extended key usages a signer may have, one OID a line"
    )
    tsa_anchors: list[str] = Field(
        default=[f"{SHIPPED}C2PA-TSA-TRUST-LIST.pem"], description="PEM files of time-stamping authorities' roots"
    )


class TrustFileError(UserError, FileNotFoundError):
    pass


def trust_text(reference: str) -> str:
    """A trust file's text: `shipped:NAME` from the package, anything else a path."""
    if reference.startswith(SHIPPED):
        shipped = resources.files("experts.provenance") / "trust" / reference[len(SHIPPED) :]
        if not shipped.is_file():
            raise TrustFileError(f"provenance: no shipped trust list {reference!r}")
        return shipped.read_text(encoding="utf-8")
    path = Path(reference).expanduser()
    if not path.is_file():
        raise TrustFileError(f"provenance: trust list {reference!r} is not a file")
    return path.read_text(encoding="utf-8")


def c2pa_settings(params: C2PAParams) -> dict:
    """c2pa-rs settings: offline, and trusting what the configured lists say and nothing else."""
    trust: dict = {}
    if params.trust_anchors:
        trust["trust_anchors"] = "\n".join(trust_text(reference) for reference in params.trust_anchors)
    if params.allowed_list:
        trust["allowed_list"] = "\n".join(trust_text(reference) for reference in params.allowed_list)
    if params.trust_config:
        trust["trust_config"] = trust_text(params.trust_config)
    if params.tsa_anchors:
        trust["anchors"] = [{"trust_kind": "tsa", "trust_anchors": "\n".join(map(trust_text, params.tsa_anchors))}]
    return {
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True},
        "trust": trust,
    }


@dataclass
class ManifestRead:
    state: str | None  # trusted / valid / invalid; None when the file holds no manifest
    finding: ProvenanceFinding | None


class C2PAReader:
    """A c2pa Context per thread (its trust lists parsed once there), reused for every file. It
    pickles as its settings, for a worker process to build its own."""

    def __init__(self, params: C2PAParams):
        self.settings = c2pa_settings(params)
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.settings = state["settings"]
        self._local = threading.local()

    def _reader_context(self):
        if getattr(self._local, "context", None) is None:
            import c2pa

            self._local.context = c2pa.Context.from_dict(self.settings)
        return self._local.context

    def read(self, data: bytes, file_format: str) -> ManifestRead:
        import c2pa

        mime_type = _MIME_TYPES.get(file_format)
        if mime_type is None:
            return ManifestRead(None, None)
        try:
            with c2pa.Reader(mime_type, io.BytesIO(data), context=self._reader_context()) as reader:
                store = json.loads(reader.json())
                state = (reader.get_validation_state() or "invalid").lower()
        except c2pa.C2paError.ManifestNotFound:
            return ManifestRead(None, None)
        except c2pa.C2paError as error:
            return ManifestRead("invalid", _unreadable(str(error)))
        return ManifestRead(state, manifest_finding(store, state))


def remote_manifest_finding(url: str) -> ProvenanceFinding:
    return ProvenanceFinding(
        source="c2pa", grade="none", says="unknown",
        detail="the file points to a C2PA manifest stored remotely, not fetched (offline)",
        fields={"remote_manifest": truncated(url)},
    )


def stripped_manifest_finding(reference: str) -> ProvenanceFinding:
    return ProvenanceFinding(
        source="c2pa", grade="none", says="unknown",
        detail="the file's XMP names an embedded C2PA manifest that is no longer in the file (stripped)",
        fields={"manifest_reference": truncated(reference)},
    )


def _unreadable(message: str) -> ProvenanceFinding:
    if message.startswith("Remote:"):
        return remote_manifest_finding(message.rsplit(" ", 1)[-1] if "http" in message else "")
    return ProvenanceFinding(
        source="c2pa", grade="none", says="unknown", validation="invalid",
        detail="a C2PA manifest that cannot be read (reported, not read as fake)",
        fields={"error": truncated(message)},
    )


def _software_agent(action: dict) -> str:
    agent = action.get("softwareAgent")
    if isinstance(agent, dict):
        return " ".join(str(agent[key]) for key in ("name", "version") if agent.get(key))
    return str(agent) if agent else ""


def _actions(manifest: dict) -> list[dict]:
    actions = []
    for assertion in manifest.get("assertions", []):
        if isinstance(assertion, dict) and str(assertion.get("label", "")).startswith("c2pa.actions"):
            data = assertion.get("data") or {}
            actions += [action for action in data.get("actions", []) if isinstance(action, dict)]
    return actions


@dataclass
class _History:
    origin: ProvenanceSays = "unknown"  # what the first created/opened action's source type says
    ai_touched: bool = False  # an action, or a placed ingredient, with AI-generated content
    edited: bool = False


def _history(store: dict, label: str, depth: int = 0) -> _History:
    """What a manifest and the manifests of its ingredients say: where the image began (a parent
    ingredient's history when the manifest only opened it), and what was done to it since."""
    manifest = store.get("manifests", {}).get(label)
    history = _History()
    if not isinstance(manifest, dict) or depth > _MAX_INGREDIENT_DEPTH:
        return history
    for action in _actions(manifest):
        says = source_type_says(str(action.get("digitalSourceType", "")))
        if says in ("generated", "ai_edited") and action.get("action") not in _ORIGIN_ACTIONS:
            history.ai_touched = True
        if action.get("action") in _ORIGIN_ACTIONS:
            if history.origin == "unknown" and says != "unknown":
                history.origin = says
        elif action.get("action"):
            history.edited = True
    for ingredient in manifest.get("ingredients", []):
        if not isinstance(ingredient, dict) or not ingredient.get("active_manifest"):
            continue
        parent = _history(store, ingredient["active_manifest"], depth + 1)
        if ingredient.get("relationship") == "parentOf":
            if history.origin == "unknown":
                history.origin = parent.origin
            history.ai_touched |= parent.ai_touched
            history.edited |= parent.edited
        elif parent.origin in ("generated", "ai_edited") or parent.ai_touched:
            history.ai_touched = True
    return history


def _says(history: _History) -> ProvenanceSays:
    if history.origin == "generated":
        return "generated"
    if history.ai_touched or history.origin == "ai_edited":
        return "ai_edited"
    if history.origin == "captured":
        return "edited" if history.edited else "captured"
    return "edited" if history.edited or history.origin == "edited" else "unknown"


def manifest_finding(store: dict, state: str) -> ProvenanceFinding:
    label = store.get("active_manifest")
    manifest = store.get("manifests", {}).get(label) or {}
    signature = manifest.get("signature_info") or {}
    issuer, common_name = signature.get("issuer"), signature.get("common_name")
    signer = issuer or common_name
    generator = manifest.get("claim_generator")
    if not generator and manifest.get("claim_generator_info"):
        info = manifest["claim_generator_info"][0]
        generator = " ".join(str(info[key]) for key in ("name", "version") if info.get(key)) or None
    actions = _actions(manifest)
    # The tool that generated the content, where an action names one, says more than the editor.
    ai_agents = [_software_agent(action) for action in actions if _software_agent(action)
                 and source_type_says(str(action.get("digitalSourceType", ""))) in ("generated", "ai_edited")]
    listed = "; ".join(
        str(action.get("action", "?"))
        + (f" [{source_type_name(str(action['digitalSourceType']))}]" if action.get("digitalSourceType") else "")
        + (f" by {_software_agent(action)}" if _software_agent(action) else "")
        for action in actions
    )
    says = _says(_history(store, label))
    failures = [item.get("code", "") for item in
                (store.get("validation_results") or {}).get("activeManifest", {}).get("failure", [])]
    state = state if state in _STATE_GRADE else "invalid"
    signed = f"signed by {signer}" + (f" ({common_name})" if common_name and common_name != signer else "")
    detail = {
        "trusted": f"a C2PA manifest {signed}, trusted",
        "valid": f"a valid C2PA manifest {signed}, whose signer is on no configured trust list",
        "invalid": f"an invalid C2PA manifest {signed} (reported, not read as fake)",
    }[state]
    detail += f": {generator}" if generator else ""
    detail += f"; {listed}" if listed else ""
    fields = {"claim_generator": generator or "", "signer": signer or "", "common_name": common_name or "",
              "actions": listed, "signed_at": str(signature.get("time", "")), "failures": ", ".join(failures)}
    return ProvenanceFinding(
        source="c2pa", grade=_STATE_GRADE[state], says=says if state != "invalid" else "unknown",
        generator=ai_agents[0] if ai_agents else generator, signer=signer, validation=state, detail=truncated(detail),
        fields={key: truncated(value) for key, value in fields.items() if value},
    )
