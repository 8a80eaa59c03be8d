namespace OrtFinetune.Onnx;

/// <summary>One dimension: a known size, a named symbol (e.g. "batch"), or unknown.</summary>
public readonly record struct Dim
{
    public long? Value { get; }
    public string? Symbol { get; }

    public Dim(long value) { Value = value; Symbol = null; }
    public Dim(string? symbol) { Value = null; Symbol = string.IsNullOrEmpty(symbol) ? null : symbol; }

    public static readonly Dim Unknown = new((string?)null);
    public bool IsKnown => Value.HasValue;
    public static implicit operator Dim(long v) => new(v);
    public override string ToString() => Value?.ToString() ?? Symbol ?? "?";

    /// <summary>True when both are the same known value or the same symbol.</summary>
    public bool SameAs(Dim other) =>
        (Value.HasValue && other.Value == Value) || (Symbol != null && other.Symbol == Symbol);
}

/// <summary>Element type plus an optional shape (null = rank unknown).</summary>
public sealed record TensorType(DataType ElemType, Dim[]? Shape)
{
    public int Rank => Shape?.Length ?? -1;
    public bool HasRank => Shape != null;
    public bool IsStatic => Shape != null && Shape.All(d => d.IsKnown);
    public long[] StaticDims() => Shape?.Select(d => d.Value ?? throw new InvalidOperationException("shape is not static")).ToArray()
        ?? throw new InvalidOperationException("rank unknown");
    public override string ToString() =>
        $"{ElemType.OnnxName()}[{(Shape == null ? "?" : string.Join(",", Shape.Select(d => d.ToString())))}]";
    public static TensorType Of(DataType t, params long[] dims) => new(t, dims.Select(d => new Dim(d)).ToArray());
}

/// <summary>A named, typed value at a graph boundary (graph input or output).</summary>
public sealed record ValueInfo(string Name, TensorType Type);
