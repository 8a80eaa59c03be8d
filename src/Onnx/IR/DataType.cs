namespace OrtFinetune.Onnx;

/// <summary>ONNX element types; values equal <c>TensorProto.DataType</c>.</summary>
public enum DataType
{
    /// <summary>No type (an unknown or absent value).</summary>
    Undefined = 0,
    /// <summary>32-bit IEEE float (ONNX "float").</summary>
    Float = 1,
    /// <summary>Unsigned 8-bit integer.</summary>
    UInt8 = 2,
    /// <summary>Signed 8-bit integer.</summary>
    Int8 = 3,
    /// <summary>Unsigned 16-bit integer.</summary>
    UInt16 = 4,
    /// <summary>Signed 16-bit integer.</summary>
    Int16 = 5,
    /// <summary>Signed 32-bit integer.</summary>
    Int32 = 6,
    /// <summary>Signed 64-bit integer (shapes, indices, labels).</summary>
    Int64 = 7,
    /// <summary>Byte strings.</summary>
    String = 8,
    /// <summary>Boolean, one byte per element.</summary>
    Bool = 9,
    /// <summary>16-bit IEEE half precision (fp16).</summary>
    Float16 = 10,
    /// <summary>64-bit IEEE float.</summary>
    Double = 11,
    /// <summary>Unsigned 32-bit integer.</summary>
    UInt32 = 12,
    /// <summary>Unsigned 64-bit integer.</summary>
    UInt64 = 13,
    /// <summary>Complex number of two 32-bit floats.</summary>
    Complex64 = 14,
    /// <summary>Complex number of two 64-bit floats.</summary>
    Complex128 = 15,
    /// <summary>bfloat16: fp32's exponent range with an 8-bit mantissa.</summary>
    BFloat16 = 16,
}

/// <summary>Sizes, classes and ONNX names of <see cref="DataType"/> values.</summary>
public static class DataTypes
{
    /// <summary>Size in bytes of one element, or 0 for variable-size types.</summary>
    public static int SizeOf(this DataType t) => t switch
    {
        DataType.Float or DataType.Int32 or DataType.UInt32 => 4,
        DataType.UInt8 or DataType.Int8 or DataType.Bool => 1,
        DataType.UInt16 or DataType.Int16 or DataType.Float16 or DataType.BFloat16 => 2,
        DataType.Int64 or DataType.UInt64 or DataType.Double or DataType.Complex64 => 8,
        DataType.Complex128 => 16,
        _ => 0,
    };

    /// <summary>Real floating-point types: the ones a gradient flows through.</summary>
    public static bool IsFloat(this DataType t) =>
        t is DataType.Float or DataType.Double or DataType.Float16 or DataType.BFloat16;

    /// <summary>The ONNX spelling of the type, e.g. "float", "float16", "bfloat16", "int64".</summary>
    public static string OnnxName(this DataType t) => t switch
    {
        DataType.Float => "float", DataType.Double => "double", DataType.Float16 => "float16",
        DataType.BFloat16 => "bfloat16", DataType.Int64 => "int64", DataType.Int32 => "int32",
        DataType.Bool => "bool", _ => t.ToString().ToLowerInvariant(),
    };
}
