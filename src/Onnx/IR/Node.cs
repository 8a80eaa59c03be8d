namespace OrtFinetune.Onnx;

public enum AttributeKind { Float, Int, String, Tensor, Graph, Floats, Ints, Strings }

/// <summary>A node attribute; exactly one of the value fields is meaningful, per <see cref="Kind"/>.</summary>
public sealed class NodeAttribute
{
    public string Name { get; }
    public AttributeKind Kind { get; }
    public float F { get; init; }
    public long I { get; init; }
    public string S { get; init; } = "";
    public Tensor? T { get; init; }
    public Graph? G { get; init; }
    public float[] Floats { get; init; } = [];
    public long[] Ints { get; init; } = [];
    public string[] Strings { get; init; } = [];

    public NodeAttribute(string name, AttributeKind kind) { Name = name; Kind = kind; }

    public static NodeAttribute Of(string name, long v) => new(name, AttributeKind.Int) { I = v };
    public static NodeAttribute Of(string name, float v) => new(name, AttributeKind.Float) { F = v };
    public static NodeAttribute Of(string name, string v) => new(name, AttributeKind.String) { S = v };
    public static NodeAttribute Of(string name, long[] v) => new(name, AttributeKind.Ints) { Ints = v };
    public static NodeAttribute Of(string name, float[] v) => new(name, AttributeKind.Floats) { Floats = v };
    public static NodeAttribute Of(string name, Tensor v) => new(name, AttributeKind.Tensor) { T = v };

    public override string ToString() => Kind switch
    {
        AttributeKind.Int => $"{Name}={I}", AttributeKind.Float => $"{Name}={F}", AttributeKind.String => $"{Name}='{S}'",
        AttributeKind.Ints => $"{Name}=[{string.Join(",", Ints)}]", AttributeKind.Floats => $"{Name}=[{string.Join(",", Floats)}]",
        _ => $"{Name}:{Kind}",
    };
}

/// <summary>
/// One operator application. Inputs and outputs are value names; an empty string marks an
/// omitted optional input or output, as in ONNX.
/// </summary>
public sealed class Node
{
    public string OpType { get; set; }
    /// <summary>"" for the default ai.onnx domain.</summary>
    public string Domain { get; set; }
    public string Name { get; set; }
    public List<string> Inputs { get; }
    public List<string> Outputs { get; }
    public Dictionary<string, NodeAttribute> Attributes { get; } = new();

    public Node(string opType, IEnumerable<string> inputs, IEnumerable<string> outputs, string name = "", string domain = "")
    {
        OpType = opType; Inputs = inputs.ToList(); Outputs = outputs.ToList(); Name = name; Domain = NormalizeDomain(domain);
    }

    public static string NormalizeDomain(string? d) => d is null or "ai.onnx" ? "" : d;

    /// <summary>Input i, or "" when absent.</summary>
    public string Input(int i) => i < Inputs.Count ? Inputs[i] : "";
    public string Output(int i) => i < Outputs.Count ? Outputs[i] : "";
    public bool HasInput(int i) => Input(i).Length > 0;

    public Node Set(NodeAttribute a) { Attributes[a.Name] = a; return this; }
    public NodeAttribute? Attr(string name) => Attributes.GetValueOrDefault(name);
    public long GetInt(string name, long dflt) => Attributes.TryGetValue(name, out var a) ? a.I : dflt;
    public float GetFloat(string name, float dflt) => Attributes.TryGetValue(name, out var a) ? a.F : dflt;
    public string GetString(string name, string dflt) => Attributes.TryGetValue(name, out var a) ? a.S : dflt;
    public long[]? GetInts(string name) => Attributes.TryGetValue(name, out var a) ? a.Ints : null;

    /// <summary>"OpType 'name'" for error messages.</summary>
    public string Describe() => $"{(Domain.Length > 0 ? Domain + "." : "")}{OpType} node '{(Name.Length > 0 ? Name : "<unnamed, output " + Output(0) + ">")}'";
    public override string ToString() =>
        $"{Describe()}({string.Join(", ", Inputs)}) -> ({string.Join(", ", Outputs)}) {string.Join(" ", Attributes.Values)}";
}
