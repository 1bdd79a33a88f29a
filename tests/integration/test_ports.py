"""The tests' servers never get the same port twice (CI once gave a stack's web and Redis one port)."""

from tests.ports import BLOCK, FIRST, free_port


def test_a_port_is_never_handed_out_twice_even_while_nobody_binds_it():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(FIRST <= p < FIRST + 12 * BLOCK for p in ports)  # below the kernel's ephemeral range
