"""pluto's product layer, in sub-packages that import downwards only (docs/ARCHITECTURE.md):
cli → mount → writeback → volume → store / net, with grid (local grids) and home beside them."""
