"""Expert families, one module each: `experts/<family>.py` registers its class with
`@register_expert("<family>")`. Nothing is imported here, so that reading a card or listing the
configuration never pays for torch; `experts.base.create_expert` imports a family's module when a
card first asks for it."""
