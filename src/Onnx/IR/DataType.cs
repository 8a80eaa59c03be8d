namespace OrtFinetune.Onnx;

/// <summary>ONNX element types; values equal <c>TensorProto.DataType</c>.</summary>
public enum DataType
{
    Undefined = 0, Float = 1, UInt8 = 2, Int8 = 3, UInt16 = 4, Int16 = 5, Int32 = 6, Int64 = 7,
    String = 8, Bool = 9, Float16 = 10, Double = 11, UInt32 = 12, UInt64 = 13,
    Complex64 = 14, Complex128 = 15, BFloat16 = 16,
}

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

    public static string OnnxName(this DataType t) => t switch
    {
        DataType.Float => "float", DataType.Double => "double", DataType.Float16 => "float16",
        DataType.BFloat16 => "bfloat16", DataType.Int64 => "int64", DataType.Int32 => "int32",
        DataType.Bool => "bool", _ => t.ToString().ToLowerInvariant(),
    };
}
