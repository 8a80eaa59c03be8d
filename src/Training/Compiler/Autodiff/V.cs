using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Autodiff;

/// <summary>
/// A value in a gradient rule: its name, its element type and the builder that emits nodes for it.
/// Operators and functions emit standard ONNX nodes, so a rule reads as its formula:
/// <c>g * y * (1 - y)</c>. A number mixed with a V becomes a 0-D constant of the V's element type,
/// so rules stay dtype-generic (fp32, fp16, bf16, fp64). Comparisons give bool values.
/// Converts implicitly to the value's name, for the builder's string API.
/// </summary>
public sealed class V
{
    public string Name { get; }
    /// <summary>Element type; Undefined when the graph does not record it.</summary>
    public DataType Type { get; }
    public GraphBuilder B { get; }

    public V(GraphBuilder b, string name, DataType type) { B = b; Name = name; Type = type; }

    public static implicit operator string(V v) => v.Name;
    public override string ToString() => Name;

    /// <summary>Emits <paramref name="op"/> over the given inputs; the result has this value's type unless <paramref name="type"/> says otherwise.</summary>
    public V Op(string op, IEnumerable<string> inputs, DataType? type = null, params NodeAttribute[] attrs) =>
        new(B, B.Op(op, inputs, attrs), type ?? Type);

    V Un(string op, params NodeAttribute[] attrs) => Op(op, [Name], null, attrs);
    static V Bin(string op, V a, V b, DataType? type = null) =>
        new(a.B, a.B.Op(op, [a.Name, b.Name]), type ?? (a.Type == DataType.Undefined ? b.Type : a.Type));

    /// <summary>A 0-D constant of this value's element type.</summary>
    public V Const(double v) => Type == DataType.Undefined
        ? throw new CompileException($"the element type of '{Name}' is unknown; a constant cannot be made in it")
        : new(B, B.Scalar(v, Type), Type);

    // ------------------------------------------------------------ arithmetic

    public static V operator +(V a, V b) => Bin("Add", a, b);
    public static V operator +(V a, double b) => a + a.Const(b);
    public static V operator +(double a, V b) => b.Const(a) + b;
    public static V operator -(V a, V b) => Bin("Sub", a, b);
    public static V operator -(V a, double b) => a - a.Const(b);
    public static V operator -(double a, V b) => b.Const(a) - b;
    public static V operator *(V a, V b) => Bin("Mul", a, b);
    public static V operator *(V a, double b) => a * a.Const(b);
    public static V operator *(double a, V b) => b.Const(a) * b;
    public static V operator /(V a, V b) => Bin("Div", a, b);
    public static V operator /(V a, double b) => a / a.Const(b);
    public static V operator /(double a, V b) => b.Const(a) / b;
    public static V operator -(V a) => a.Un("Neg");

    // ------------------------------------------------------------ comparisons and logic (bool results)

    public static V operator <(V a, V b) => Bin("Less", a, b, DataType.Bool);
    public static V operator >(V a, V b) => Bin("Greater", a, b, DataType.Bool);
    public static V operator <=(V a, V b) => Bin("LessOrEqual", a, b, DataType.Bool);
    public static V operator >=(V a, V b) => Bin("GreaterOrEqual", a, b, DataType.Bool);
    public static V operator <(V a, double b) => a < a.Const(b);
    public static V operator >(V a, double b) => a > a.Const(b);
    public static V operator <=(V a, double b) => a <= a.Const(b);
    public static V operator >=(V a, double b) => a >= a.Const(b);
    public static V operator &(V a, V b) => Bin("And", a, b, DataType.Bool);
    public static V operator !(V a) => a.Op("Not", [a.Name], DataType.Bool);
    /// <summary>Elementwise Equal (== is left to reference equality).</summary>
    public V Eq(V other) => Bin("Equal", this, other, DataType.Bool);
    public V Eq(double other) => Eq(Const(other));

    /// <summary>cond ? a : b, elementwise.</summary>
    public static V Where(V cond, V a, V b) => new(cond.B, cond.B.Where(cond, a, b), a.Type == DataType.Undefined ? b.Type : a.Type);
    public static V Where(V cond, V a, double b) => Where(cond, a, a.Const(b));
    public static V Where(V cond, double a, V b) => Where(cond, b.Const(a), b);

    // ------------------------------------------------------------ functions

    public V Exp() => Un("Exp");
    public V Log() => Un("Log");
    public V Sqrt() => Un("Sqrt");
    public V Abs() => Un("Abs");
    public V Sign() => Un("Sign");
    public V Erf() => Un("Erf");
    public V Tanh() => Un("Tanh");
    public V Sigmoid() => Un("Sigmoid");
    public V Reciprocal() => Un("Reciprocal");
    public V Pow(V p) => Bin("Pow", this, p);
    public V MatMul(V other) => Bin("MatMul", this, other);

    /// <summary>Sum over static axes (keeps them by default).</summary>
    public V Sum(long[] axes, bool keepDims = true) => new(B, B.ReduceSum(Name, axes, keepDims), Type);
    /// <summary>Mean over static axes (keeps them by default).</summary>
    public V Mean(long[] axes, bool keepDims = true) => new(B, B.ReduceMean(Name, axes, keepDims), Type);

    /// <summary>This value in element type <paramref name="t"/> (no node when it already is).</summary>
    public V Cast(DataType t) => t == DataType.Undefined
        ? throw new CompileException($"cannot cast '{Name}' to an unknown element type")
        : t == Type ? this : new(B, B.Cast(Name, t), t);
    /// <summary>This value in the element type of <paramref name="like"/>.</summary>
    public V CastLike(V like) => Cast(like.Type);

    public V Reshape(string shape) => new(B, B.Reshape(Name, shape), Type);
    public V Expand(string shape) => new(B, B.Expand(Name, shape), Type);
    public V Transpose(params long[] perm) => new(B, B.Transpose(Name, perm), Type);
    public V Unsqueeze(params long[] axes) => new(B, B.Unsqueeze(Name, axes), Type);
    public V Squeeze(params long[] axes) => new(B, B.Squeeze(Name, axes), Type);
    /// <summary>Shape(this), int64.</summary>
    public V Shape() => new(B, B.Shape(Name), DataType.Int64);
    /// <summary>Number of elements, int64.</summary>
    public V Size() => Op("Size", [Name], DataType.Int64);
}
