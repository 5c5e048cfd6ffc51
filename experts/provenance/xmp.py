"""XMP: IPTC's DigitalSourceType (and the IPTC 2025.1 AI fields), the description some
generators write there, and a remote C2PA manifest's address (`dcterms:provenance`).

The IPTC digital source type vocabulary is also what C2PA actions use, so what each term says
about an image's origin is defined here, once."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree

from coe.core.records import ProvenanceFinding, ProvenanceSays
from experts.provenance.generators import truncated

IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_DC = "http://purl.org/dc/elements/1.1/"
_DCTERMS = "http://purl.org/dc/terms/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
SOURCE_TYPE_VOCABULARY = "http://cv.iptc.org/newscodes/digitalsourcetype/"

# What each IPTC digital source type says about where an image came from.
SOURCE_TYPE_SAYS: dict[str, ProvenanceSays] = {
    "trainedAlgorithmicMedia": "generated",
    "algorithmicMedia": "generated",
    "compositeWithTrainedAlgorithmicMedia": "ai_edited",
    "compositeSynthetic": "ai_edited",
    "digitalCapture": "captured",
    "computationalCapture": "captured",
    "negativeFilm": "captured",
    "positiveFilm": "captured",
    "print": "captured",
    "humanEdits": "edited",
    "minorHumanEdits": "edited",
    "algorithmicallyEnhanced": "edited",
    "compositeCapture": "edited",
    "composite": "edited",
}
AI_FIELDS = ("AISystemUsed", "AISystemVersionUsed", "AIPromptInformation", "AIPromptWriterName")


def source_type_name(value: str) -> str:
    """`http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture` -> `digitalCapture`."""
    return value.strip().rsplit("/", 1)[-1]


def source_type_says(value: str) -> ProvenanceSays:
    return SOURCE_TYPE_SAYS.get(source_type_name(value), "unknown")


@dataclass
class XmpFields:
    digital_source_type: str | None = None
    ai_fields: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    remote_manifest: str | None = None
    error: str | None = None


def read_xmp(packets: list[str]) -> XmpFields:
    fields = XmpFields()
    for packet in packets:
        _read_packet(packet, fields)
    return fields


def _read_packet(packet: str, fields: XmpFields) -> None:
    for opening, closing in (("<x:xmpmeta", "</x:xmpmeta>"), ("<rdf:RDF", "</rdf:RDF>")):
        start, end = packet.find(opening), packet.rfind(closing)
        if 0 <= start < end:
            document = packet[start : end + len(closing)]
            break
    else:
        fields.error = "XMP: no xmpmeta or RDF element"
        return
    # XMP has no use for a DTD; one can only expand entities (a "billion laughs" bomb).
    if "<!DOCTYPE" in packet or "<!ENTITY" in packet:
        fields.error = "XMP: a DTD, not read"
        return
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as error:
        fields.error = f"XMP: {error}"
        return
    for element in root.iter():
        for name, value in element.attrib.items():
            _take(fields, name, value)
        text = (element.text or "").strip()
        if text:
            _take(fields, element.tag, text)
        elif element.tag == f"{{{_DC}}}description":
            # dc:description is a language alternative: rdf:Alt of rdf:li.
            item = element.find(f".//{{{_RDF}}}li")
            if item is not None and item.text:
                fields.description = fields.description or item.text.strip()


def _take(fields: XmpFields, name: str, value: str) -> None:
    if name == f"{{{IPTC_EXT}}}DigitalSourceType":
        fields.digital_source_type = fields.digital_source_type or value
    elif name.startswith(f"{{{IPTC_EXT}}}") and name[len(IPTC_EXT) + 2 :] in AI_FIELDS:
        fields.ai_fields.setdefault(name[len(IPTC_EXT) + 2 :], value)
    elif name == f"{{{_DCTERMS}}}provenance":
        fields.remote_manifest = fields.remote_manifest or value
    elif name == f"{{{_DC}}}description":
        fields.description = fields.description or value


def iptc_finding(xmp: XmpFields, where: str) -> ProvenanceFinding | None:
    """An unsigned IPTC source type naming AI is a claim; one naming a capture only a hint, since
    laundering an image means writing exactly that. The 2025.1 AI fields say an AI system was used."""
    if xmp.digital_source_type is None and not xmp.ai_fields:
        return None
    says: ProvenanceSays = source_type_says(xmp.digital_source_type) if xmp.digital_source_type else "generated"
    system = " ".join(filter(None, (xmp.ai_fields.get("AISystemUsed"), xmp.ai_fields.get("AISystemVersionUsed"))))
    grade = "claim" if says in ("generated", "ai_edited") else "hint"
    fields = {"where": f"{where} XMP"}
    if xmp.digital_source_type:
        fields["digital_source_type"] = truncated(xmp.digital_source_type)
    fields.update({name: truncated(value) for name, value in xmp.ai_fields.items()})
    named = source_type_name(xmp.digital_source_type) if xmp.digital_source_type else "AI system fields"
    return ProvenanceFinding(
        source="iptc", grade=grade, says=says, generator=system or None,
        detail=f"{where} XMP: IPTC digital source type {named}" + (f", AI system {system}" if system else ""),
        fields=fields,
    )
