"""Finite fields GF(q), q = p^k a prime power: the alphabet of ByzShield's MOLS.

MOLS of order l exist for every prime power l: over GF(l) the squares
L_a(i, j) = a i + j, a a nonzero field element, are mutually orthogonal (see
docs/design.md section 2 and :func:`byzshield.design.placements.mols`). For prime l the
field is arithmetic mod l; for l = p^k (k > 1) an element is a polynomial of degree < k
over GF(p), reduced modulo a monic irreducible polynomial of degree k (Lidl &
Niederreiter, *Finite Fields*, 1997, ch. 1).

    >>> add, mul = galois_field(4)
    >>> mul[2][3], add[2][3]   # x * (x + 1) = x^2 + x = 1 mod x^2 + x + 1; x + (x + 1) = 1
    (1, 1)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

__all__ = ["galois_field", "is_prime", "prime_power"]


def prime_power(n: int) -> tuple[int, int] | None:
    """(p, k) with n = p**k for a prime p, or None."""
    if n < 2:
        return None
    for p in range(2, math.isqrt(n) + 1):
        if n % p == 0:
            k = 0
            while n % p == 0:
                n //= p
                k += 1
            return (p, k) if n == 1 else None
    return (n, 1)


def is_prime(n: int) -> bool:
    """Whether n is a prime."""
    pk = prime_power(n)
    return pk is not None and pk[1] == 1


def galois_field(q: int) -> tuple[list[list[int]], list[list[int]]]:
    """Addition and multiplication tables of GF(q), q = p**k a prime power.

    Elements are 0..q-1; element e stands for the polynomial whose coefficients are the
    base-p digits of e, arithmetic is modulo the first monic irreducible polynomial of
    degree k in lexicographic order. For prime q this is arithmetic mod q.
    """
    pk = prime_power(q)
    if pk is None:
        raise ValueError(f"GF(q) needs q to be a prime power (2, 3, 4, 5, 7, 8, 9, ...), got {q}")
    p, k = pk

    def digits(e: int) -> list[int]:
        return [(e // p**i) % p for i in range(k)]

    def number(ds: Sequence[int]) -> int:
        return sum(d * p**i for i, d in enumerate(ds))

    def polymulmod(a: list[int], b: list[int], mod: list[int]) -> list[int]:
        prod = [0] * (2 * k - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                prod[i + j] = (prod[i + j] + x * y) % p
        for deg in range(len(prod) - 1, k - 1, -1):  # reduce by monic `mod` of degree k
            c = prod[deg]
            if c:
                for i in range(k + 1):
                    prod[deg - k + i] = (prod[deg - k + i] - c * mod[i]) % p
        return prod[:k]

    modulus = [1] if k == 1 else None
    if k > 1:
        for low in itertools.product(range(p), repeat=k):  # monic x^k + low
            cand = list(low) + [1]
            if low[0] == 0:
                continue
            # irreducible iff it has no factor of degree 1..k//2: check no root-free test
            # suffices only for k <= 3, so test by brute-force polynomial division.
            if _irreducible(cand, p):
                modulus = cand
                break
    add = [
        [
            number([(x + y) % p for x, y in zip(digits(a), digits(b), strict=False)])
            for b in range(q)
        ]
        for a in range(q)
    ]
    if k == 1:
        mul = [[(a * b) % p for b in range(q)] for a in range(q)]
    else:
        mul = [
            [number(polymulmod(digits(a), digits(b), modulus)) for b in range(q)] for a in range(q)
        ]
    return add, mul


def _irreducible(poly: list[int], p: int) -> bool:
    """Whether the monic polynomial ``poly`` (low degree first) is irreducible over GF(p)."""
    deg = len(poly) - 1
    for d in range(1, deg // 2 + 1):
        for low in itertools.product(range(p), repeat=d):
            divisor = list(low) + [1]
            rem = list(poly)
            for i in range(deg - d, -1, -1):
                c = rem[i + d]
                if c:
                    for t in range(d + 1):
                        rem[i + t] = (rem[i + t] - c * divisor[t]) % p
            if not any(rem[:d]):
                return False
    return True
