"""Built-in expert families; importing this package registers them (experts.base stays free of
side effects)."""

from experts import dct, fakevlm, legion, npr, residual, spectrum, univfd  # noqa: F401
