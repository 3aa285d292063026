"""The pickle interpreter: inert records (values), the opcode loop (vm), reading a call's
arguments (arguments), what torch's and numpy's functions rebuild (rebuilders, a table) and
the node tree built from it all (rebuild)."""
