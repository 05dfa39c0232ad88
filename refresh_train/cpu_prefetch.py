"""A CPU cache prefetch hint for Numba kernels.

Shared by the sampler's kernels (:mod:`refresh_train.sampler_kernels`) and
the tiers' row-copy kernels (:mod:`refresh_train.tiers._copy_kernels`): both
read rows at random, and asking for them some iterations ahead keeps many
cache and TLB misses in flight instead of one at a time.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch"]


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to load ``arr[idx]`` into cache (no bounds check, no fault).

    A prefetch of an address that is out of range or unmapped is dropped by
    the hardware, never a fault, so callers need not guard the index.
    """
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, read, locality 3 = keep in all levels, data cache)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
