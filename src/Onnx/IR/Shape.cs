namespace OrtFinetune.Onnx;

/// <summary>One dimension: a known size, a named symbol (e.g. "batch"), or unknown.</summary>
public readonly record struct Dim
{
    /// <summary>The size when known.</summary>
    public long? Value { get; }
    /// <summary>The symbol (e.g. "N") when the size is symbolic; null for a known or unknown size.</summary>
    public string? Symbol { get; }

    /// <summary>A known size.</summary>
    public Dim(long value) { Value = value; Symbol = null; }
    /// <summary>A symbolic size; null or "" gives an unknown one.</summary>
    public Dim(string? symbol) { Value = null; Symbol = string.IsNullOrEmpty(symbol) ? null : symbol; }

    /// <summary>A size about which nothing is known.</summary>
    public static readonly Dim Unknown = new((string?)null);
    /// <summary>Whether the size is a known number.</summary>
    public bool IsKnown => Value.HasValue;
    /// <summary>A known size from a number.</summary>
    public static implicit operator Dim(long v) => new(v);
    /// <summary>The number, the symbol, or "?".</summary>
    public override string ToString() => Value?.ToString() ?? Symbol ?? "?";

    /// <summary>True when both are the same known value or the same symbol.</summary>
    public bool SameAs(Dim other) =>
        (Value.HasValue && other.Value == Value) || (Symbol != null && other.Symbol == Symbol);
}

/// <summary>Element type plus an optional shape (null = rank unknown).</summary>
public sealed record TensorType(DataType ElemType, Dim[]? Shape)
{
    /// <summary>Number of dimensions, or -1 when the rank is unknown.</summary>
    public int Rank => Shape?.Length ?? -1;
    /// <summary>Whether the rank is known.</summary>
    public bool HasRank => Shape != null;
    /// <summary>Whether every dimension is a known number.</summary>
    public bool IsStatic => Shape != null && Shape.All(d => d.IsKnown);
    /// <summary>The dimensions as numbers; throws when the shape is not static.</summary>
    public long[] StaticDims() => Shape?.Select(d => d.Value ?? throw new InvalidOperationException("shape is not static")).ToArray()
        ?? throw new InvalidOperationException("rank unknown");
    /// <summary>E.g. "float[N,3,224,224]".</summary>
    public override string ToString() =>
        $"{ElemType.OnnxName()}[{(Shape == null ? "?" : string.Join(",", Shape.Select(d => d.ToString())))}]";
    /// <summary>A static tensor type.</summary>
    public static TensorType Of(DataType t, params long[] dims) => new(t, dims.Select(d => new Dim(d)).ToArray());
}

/// <summary>A named, typed value at a graph boundary (graph input or output).</summary>
public sealed record ValueInfo(string Name, TensorType Type);
