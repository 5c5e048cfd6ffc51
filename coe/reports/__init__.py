"""Reports people look at: `report.html` beside the results of `coe route`, `coe bench run` and
`coe router eval | train`, self-contained and readable offline from disk."""
