"""Attack scripts against a local grid: each prints what was tried, what it cost, what an honest client saw
(docs/TRANSPORT.md "Floods", docs/TRUST.md)."""
