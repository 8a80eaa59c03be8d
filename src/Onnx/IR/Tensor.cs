using System.Runtime.InteropServices;

namespace OrtFinetune.Onnx;

/// <summary>
/// A constant tensor (initializer or attribute value). Data is kept as little-endian raw bytes;
/// loaded tensors alias the protobuf buffer, so large models are not copied.
/// </summary>
public sealed class Tensor
{
    /// <summary>The tensor's name (the initializer name in a graph).</summary>
    public string Name { get; set; }
    /// <summary>Element type.</summary>
    public DataType Type { get; }
    /// <summary>Dimensions (empty for a scalar).</summary>
    public long[] Dims { get; }
    /// <summary>Element data, little-endian, row-major.</summary>
    public ReadOnlyMemory<byte> RawData { get; }
    /// <summary>Only for <see cref="DataType.String"/> tensors.</summary>
    public IReadOnlyList<byte[]>? Strings { get; }

    /// <summary>A tensor over <paramref name="raw"/> (not copied); its length must match the element count and type.</summary>
    public Tensor(string name, DataType type, long[] dims, ReadOnlyMemory<byte> raw, IReadOnlyList<byte[]>? strings = null)
    {
        Name = name; Type = type; Dims = dims; RawData = raw; Strings = strings;
        long n = ElementCount;
        if (type != DataType.String && type.SizeOf() > 0 && raw.Length != n * type.SizeOf())
            throw new OnnxFormatException($"tensor '{name}': {raw.Length} bytes of data for {type.OnnxName()}[{string.Join(",", dims)}] ({n} elements) ");
    }

    /// <summary>Number of elements (1 for a scalar).</summary>
    public long ElementCount => Dims.Aggregate(1L, (a, d) => checked(a * d));
    /// <summary>Type and static shape.</summary>
    public TensorType TensorType => new(Type, Dims.Select(d => new Dim(d)).ToArray());

    /// <summary>A tensor copying <paramref name="values"/> (of the C# type matching <paramref name="type"/>).</summary>
    public static Tensor FromArray<T>(string name, DataType type, T[] values, params long[] dims) where T : unmanaged
        => new(name, type, dims, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    /// <summary>A float tensor copying <paramref name="v"/>.</summary>
    public static Tensor Float(string name, float[] v, params long[] dims) => FromArray(name, DataType.Float, v, dims);
    /// <summary>A double tensor copying <paramref name="v"/>.</summary>
    public static Tensor Double(string name, double[] v, params long[] dims) => FromArray(name, DataType.Double, v, dims);
    /// <summary>An int64 tensor copying <paramref name="v"/>.</summary>
    public static Tensor Int64(string name, long[] v, params long[] dims) => FromArray(name, DataType.Int64, v, dims);

    /// <summary>A tensor of the given float-like (or integer) type holding <paramref name="values"/> converted.</summary>
    public static Tensor OfType(string name, DataType type, double[] values, params long[] dims) => type switch
    {
        DataType.Float => FromArray(name, type, values.Select(x => (float)x).ToArray(), dims),
        DataType.Double => FromArray(name, type, values, dims),
        DataType.Float16 => FromArray(name, type, values.Select(x => BitConverter.HalfToUInt16Bits((Half)x)).ToArray(), dims),
        DataType.BFloat16 => FromArray(name, type, values.Select(x => BFloat16Bits((float)x)).ToArray(), dims),
        DataType.Int64 => FromArray(name, type, values.Select(x => (long)x).ToArray(), dims),
        DataType.Int32 => FromArray(name, type, values.Select(x => (int)x).ToArray(), dims),
        DataType.Bool => FromArray(name, type, values.Select(x => x != 0 ? (byte)1 : (byte)0).ToArray(), dims),
        _ => throw new NotSupportedException($"constant of type {type.OnnxName()}"),
    };

    /// <summary>Round-to-nearest-even float -> bfloat16 bits.</summary>
    public static ushort BFloat16Bits(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0x7FC0;
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>The float value of bfloat16 bits (exact).</summary>
    public static float BFloat16ToFloat(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>The data viewed as elements of <typeparamref name="T"/> (no copy).</summary>
    public ReadOnlySpan<T> Span<T>() where T : unmanaged => MemoryMarshal.Cast<byte, T>(RawData.Span);

    /// <summary>Values converted to double (float, double, 16-bit floats and integers).</summary>
    public double[] ToDoubles() => Type switch
    {
        DataType.Float => Span<float>().ToArray().Select(x => (double)x).ToArray(),
        DataType.Double => Span<double>().ToArray(),
        DataType.Float16 => Span<ushort>().ToArray().Select(x => (double)BitConverter.UInt16BitsToHalf(x)).ToArray(),
        DataType.BFloat16 => Span<ushort>().ToArray().Select(x => (double)BFloat16ToFloat(x)).ToArray(),
        DataType.Int64 => Span<long>().ToArray().Select(x => (double)x).ToArray(),
        DataType.Int32 => Span<int>().ToArray().Select(x => (double)x).ToArray(),
        DataType.Int8 => Span<sbyte>().ToArray().Select(x => (double)x).ToArray(),
        DataType.UInt8 or DataType.Bool => RawData.ToArray().Select(x => (double)x).ToArray(),
        _ => throw new NotSupportedException($"tensor '{Name}' of type {Type.OnnxName()} has no numeric view"),
    };

    /// <summary>Integer values (int64/int32/...); used for shape and axes constants.</summary>
    public long[] ToInt64s() => Type switch
    {
        DataType.Int64 => Span<long>().ToArray(),
        DataType.Int32 => Span<int>().ToArray().Select(x => (long)x).ToArray(),
        _ => ToDoubles().Select(x => (long)x).ToArray(),
    };

    /// <summary>Values converted to float.</summary>
    public float[] ToFloats() => Type == DataType.Float ? Span<float>().ToArray() : ToDoubles().Select(x => (float)x).ToArray();

    /// <summary>The same data under another name.</summary>
    public Tensor WithName(string name) => new(name, Type, Dims, RawData, Strings);
    /// <summary>"name: type[dims]".</summary>
    public override string ToString() => $"{Name}: {TensorType}";
}

/// <summary>An ONNX file or graph is malformed or unsupported; the message names the file, node or value.</summary>
public class OnnxFormatException : Exception
{
    /// <summary>An error whose <paramref name="message"/> names the file, node or value.</summary>
    public OnnxFormatException(string message, Exception? inner = null) : base(message, inner) { }
}
