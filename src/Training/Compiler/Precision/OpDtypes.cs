using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// How an op's float inputs and outputs relate to its compute dtype: most ONNX ops have one type
/// variable T shared by all their float inputs and outputs ("tied"); a few take a float operand of
/// another type variable (Dropout's ratio, Resize's scales, Pow's exponent, BatchNormalization's
/// statistics) or produce one (LayerNormalization's stash-typed mean). Ops whose dtype comes from an
/// attribute or that accept any type (Cast, Shape, Size) are left alone.
/// </summary>
public static class OpDtypes
{
    static readonly Dictionary<string, int[]> UntiedInputs = new()
    {
        ["Dropout"] = [1], ["Resize"] = [1, 2], ["Upsample"] = [1], ["Pow"] = [1],
        ["BatchNormalization"] = [1, 2, 3, 4], ["CastLike"] = [1],
    };

    static readonly Dictionary<string, int[]> UntiedOutputs = new()
    {
        ["LayerNormalization"] = [1, 2], ["BatchNormalization"] = [1, 2],
    };

    /// <summary>Ops never rewritten: their output dtype is an attribute or they accept any type.</summary>
    public static readonly IReadOnlySet<string> Agnostic = new HashSet<string>
    {
        "Cast", "CastLike", "Shape", "Size", "Constant", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform",
        "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan",
    };

    public static bool TiedInput(Node n, int slot) => !(UntiedInputs.TryGetValue(n.OpType, out var s) && s.Contains(slot));
    public static bool TiedOutput(Node n, int slot) => !(UntiedOutputs.TryGetValue(n.OpType, out var s) && s.Contains(slot));

    public static bool IsHalf(DataType t) => t is DataType.Float16 or DataType.BFloat16;
    public static bool IsFloat32OrHalf(DataType t) => t is DataType.Float or DataType.Float16 or DataType.BFloat16;
}
