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
        input = input[..inout.Length];
        for (int i = 0; i < inout.Length; i++)
            inout[i] = ToFloat16(FromFloat16(input[i]) + FromFloat16(inout[i]));
    }

    /// <summary>fp16 to fp32, exact. Normal numbers by rebiasing the exponent (System.Half's conversion
    /// is several times slower); zeros, subnormals, infinities and NaN through System.Half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromFloat16(ushort bits)
    {
        uint magnitude = bits & 0x7FFFu;
        if (magnitude - 0x0400u < 0x7800u)   // biased exponent 1..30
            return BitConverter.UInt32BitsToSingle(((bits & 0x8000u) << 16) | ((magnitude + 0x1_C000u) << 13));   // +(127-15)<<10
        return (float)BitConverter.UInt16BitsToHalf(bits);
    }

    /// <summary>fp32 to fp16, round to nearest, ties to even (as System.Half's conversion). Values that
    /// land in fp16's normal range, or round past its largest (65504) to infinity, take the fast path.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value), magnitude = bits & 0x7FFF_FFFFu;
        if (magnitude - 0x3880_0000u < 0x4780_0000u - 0x3880_0000u)   // 2^-14 <= |value| < 2^16
        {
            // Round the 13 dropped bits to nearest even, then rebias the exponent by (127-15)<<23;
            // a carry moves into the exponent, and from 65520 up into infinity (0x7C00), as it should.
            uint rounded = (magnitude + 0x0FFFu + ((magnitude >> 13) & 1u) - 0x3800_0000u) >> 13;
            return (ushort)(((bits >> 16) & 0x8000u) | rounded);
        }
        return BitConverter.HalfToUInt16Bits((Half)value);
    }

    public static void AddBFloat16(ReadOnlySpan<ushort> input, Span<ushort> inout)
    {
        input = input[..inout.Length];
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
