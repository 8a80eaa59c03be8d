using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace OrtFinetune.Distributed;

/// <summary>
/// Element-wise sums of fp16 and bf16 buffers for user-defined MPI reduction ops: MPI has no 16-bit
/// float types, so a 16-bit bucket travels as <c>MPI_UINT16_T</c> and these callbacks add it.
/// </summary>
/// <remarks>
/// Each pair is added in fp32 and rounded back to nearest, ties to even. That is the correctly rounded
/// 16-bit sum: two fp16 (11-bit significand) or bf16 (8-bit) values whose exponents differ by less
/// than 14 (fp16) or 16 (bf16) add exactly in fp32's 24 bits; beyond that the smaller one is far below
/// half a 16-bit ulp of the larger, fp32 rounding cannot move the sum onto a 16-bit tie, and both
/// routes give the larger. Non-finite values propagate as IEEE addition does (NaN + x = NaN,
/// inf + finite = inf, inf + -inf = NaN) and an overflowing sum becomes inf: the trainer relies on a
/// non-finite gradient on any rank giving a non-finite sum on every rank. The callbacks must never
/// throw (an exception cannot cross into MPI's C frames), and they do not.
/// </remarks>
internal static unsafe class SixteenBitSum
{
    /// <summary><c>MPI_User_function</c>: <c>void (void *in, void *inout, int *len, MPI_Datatype *type)</c>;
    /// <c>inout[i] = in[i] + inout[i]</c> in fp16.</summary>
    [UnmanagedCallersOnly]
    public static void Float16(void* input, void* inout, int* length, IntPtr* datatype) =>
        AddFloat16(new ReadOnlySpan<ushort>(input, *length), new Span<ushort>(inout, *length));

    /// <summary><c>MPI_User_function</c> adding bf16 values: <c>inout[i] = in[i] + inout[i]</c>.</summary>
    [UnmanagedCallersOnly]
    public static void BFloat16(void* input, void* inout, int* length, IntPtr* datatype) =>
        AddBFloat16(new ReadOnlySpan<ushort>(input, *length), new Span<ushort>(inout, *length));

    /// <summary>The callbacks' addresses, for <c>MPI_Op_create</c>.</summary>
    public static IntPtr Float16Pointer => (IntPtr)(delegate* unmanaged<void*, void*, int*, IntPtr*, void>)&Float16;
    public static IntPtr BFloat16Pointer => (IntPtr)(delegate* unmanaged<void*, void*, int*, IntPtr*, void>)&BFloat16;

    public static void AddFloat16(ReadOnlySpan<ushort> input, Span<ushort> inout)
    {
        var a = MemoryMarshal.Cast<ushort, Half>(input);
        var b = MemoryMarshal.Cast<ushort, Half>(inout);
        for (int i = 0; i < b.Length; i++) b[i] = (Half)((float)a[i] + (float)b[i]);
    }

    public static void AddBFloat16(ReadOnlySpan<ushort> input, Span<ushort> inout)
    {
        for (int i = 0; i < inout.Length; i++)
            inout[i] = ToBFloat16(FromBFloat16(input[i]) + FromBFloat16(inout[i]));
    }

    /// <summary>bf16 is the upper half of an fp32: widening is exact.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromBFloat16(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>fp32 to bf16, round to nearest, ties to even; NaN stays a (quiet) NaN with its sign,
    /// infinities stay infinities, and finite values past bf16's largest round to infinity.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        // A NaN whose payload lies only in the low 16 bits would round to infinity: keep it a NaN.
        if ((bits & 0x7FFF_FFFF) > 0x7F80_0000) return (ushort)((bits >> 16) | 0x0040);
        // Adding 0x7FFF plus the lowest kept bit rounds halfway cases to the even neighbour; a carry
        // out of the significand correctly bumps the exponent (up to infinity, 0x7F80).
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }
}
