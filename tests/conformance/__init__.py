"""The engine conformance suite: one set of tests, run against every engine.

The tests state TigerBeetle 0.17.x semantics as a real cluster behaves (see
`src/state_machine.zig` in tigerbeetle/tigerbeetle). The embedded engine must pass all of them;
a real cluster runs too when `TB_ADDRESSES` is set, which is how the tests themselves are checked.
"""
