namespace OrtFinetune.Onnx;

/// <summary>The value kind of a <see cref="NodeAttribute"/> (ONNX AttributeProto.AttributeType).</summary>
public enum AttributeKind
{
    /// <summary>One float (<see cref="NodeAttribute.F"/>).</summary>
    Float,
    /// <summary>One int64 (<see cref="NodeAttribute.I"/>).</summary>
    Int,
    /// <summary>One string (<see cref="NodeAttribute.S"/>).</summary>
    String,
    /// <summary>A tensor (<see cref="NodeAttribute.T"/>).</summary>
    Tensor,
    /// <summary>A subgraph (<see cref="NodeAttribute.G"/>), e.g. of If or Loop.</summary>
    Graph,
    /// <summary>A list of floats (<see cref="NodeAttribute.Floats"/>).</summary>
    Floats,
    /// <summary>A list of int64 (<see cref="NodeAttribute.Ints"/>).</summary>
    Ints,
    /// <summary>A list of strings (<see cref="NodeAttribute.Strings"/>).</summary>
    Strings,
}

/// <summary>A node attribute; exactly one of the value fields is meaningful, per <see cref="Kind"/>.</summary>
public sealed class NodeAttribute
{
    /// <summary>The attribute name, e.g. "axis".</summary>
    public string Name { get; }
    /// <summary>Which value field is meaningful.</summary>
    public AttributeKind Kind { get; }
    /// <summary>The value of a <see cref="AttributeKind.Float"/> attribute.</summary>
    public float F { get; init; }
    /// <summary>The value of an <see cref="AttributeKind.Int"/> attribute.</summary>
    public long I { get; init; }
    /// <summary>The value of a <see cref="AttributeKind.String"/> attribute.</summary>
    public string S { get; init; } = "";
    /// <summary>The value of a <see cref="AttributeKind.Tensor"/> attribute (e.g. Constant's "value").</summary>
    public Tensor? T { get; init; }
    /// <summary>The value of a <see cref="AttributeKind.Graph"/> attribute.</summary>
    public Graph? G { get; init; }
    /// <summary>The value of a <see cref="AttributeKind.Floats"/> attribute.</summary>
    public float[] Floats { get; init; } = [];
    /// <summary>The value of an <see cref="AttributeKind.Ints"/> attribute.</summary>
    public long[] Ints { get; init; } = [];
    /// <summary>The value of a <see cref="AttributeKind.Strings"/> attribute.</summary>
    public string[] Strings { get; init; } = [];

    /// <summary>An attribute of the given kind; set its value field with an initializer, or use <c>Of</c>.</summary>
    public NodeAttribute(string name, AttributeKind kind) { Name = name; Kind = kind; }

    /// <summary>An int attribute.</summary>
    public static NodeAttribute Of(string name, long v) => new(name, AttributeKind.Int) { I = v };
    /// <summary>A float attribute.</summary>
    public static NodeAttribute Of(string name, float v) => new(name, AttributeKind.Float) { F = v };
    /// <summary>A string attribute.</summary>
    public static NodeAttribute Of(string name, string v) => new(name, AttributeKind.String) { S = v };
    /// <summary>An ints attribute.</summary>
    public static NodeAttribute Of(string name, long[] v) => new(name, AttributeKind.Ints) { Ints = v };
    /// <summary>A floats attribute.</summary>
    public static NodeAttribute Of(string name, float[] v) => new(name, AttributeKind.Floats) { Floats = v };
    /// <summary>A tensor attribute.</summary>
    public static NodeAttribute Of(string name, Tensor v) => new(name, AttributeKind.Tensor) { T = v };

    /// <summary>"name=value", for messages.</summary>
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
    /// <summary>The operator, e.g. "MatMul".</summary>
    public string OpType { get; set; }
    /// <summary>"" for the default ai.onnx domain.</summary>
    public string Domain { get; set; }
    /// <summary>The node name (may be empty; unique when set).</summary>
    public string Name { get; set; }
    /// <summary>Input value names in operator order; "" for an omitted optional input.</summary>
    public List<string> Inputs { get; }
    /// <summary>Output value names in operator order; "" for an omitted optional output.</summary>
    public List<string> Outputs { get; }
    /// <summary>Attributes by name.</summary>
    public Dictionary<string, NodeAttribute> Attributes { get; } = new();

    /// <summary>A node; <paramref name="domain"/> "" or "ai.onnx" is the default domain.</summary>
    public Node(string opType, IEnumerable<string> inputs, IEnumerable<string> outputs, string name = "", string domain = "")
    {
        OpType = opType; Inputs = inputs.ToList(); Outputs = outputs.ToList(); Name = name; Domain = NormalizeDomain(domain);
    }

    /// <summary>The domain as stored: "" for null, "" and "ai.onnx".</summary>
    public static string NormalizeDomain(string? d) => d is null or "ai.onnx" ? "" : d;

    /// <summary>Input i, or "" when absent.</summary>
    public string Input(int i) => i < Inputs.Count ? Inputs[i] : "";
    /// <summary>Output i, or "" when absent.</summary>
    public string Output(int i) => i < Outputs.Count ? Outputs[i] : "";
    /// <summary>Whether input i is present (not omitted).</summary>
    public bool HasInput(int i) => Input(i).Length > 0;

    /// <summary>Sets (or replaces) an attribute; returns the node, for chaining.</summary>
    public Node Set(NodeAttribute a) { Attributes[a.Name] = a; return this; }
    /// <summary>The attribute called <paramref name="name"/>, or null.</summary>
    public NodeAttribute? Attr(string name) => Attributes.GetValueOrDefault(name);
    /// <summary>An int attribute, or <paramref name="dflt"/> when absent.</summary>
    public long GetInt(string name, long dflt) => Attributes.TryGetValue(name, out var a) ? a.I : dflt;
    /// <summary>A float attribute, or <paramref name="dflt"/> when absent.</summary>
    public float GetFloat(string name, float dflt) => Attributes.TryGetValue(name, out var a) ? a.F : dflt;
    /// <summary>A string attribute, or <paramref name="dflt"/> when absent.</summary>
    public string GetString(string name, string dflt) => Attributes.TryGetValue(name, out var a) ? a.S : dflt;
    /// <summary>An ints attribute, or null when absent.</summary>
    public long[]? GetInts(string name) => Attributes.TryGetValue(name, out var a) ? a.Ints : null;

    /// <summary>"OpType 'name'" for error messages.</summary>
    public string Describe() => $"{(Domain.Length > 0 ? Domain + "." : "")}{OpType} node '{(Name.Length > 0 ? Name : "<unnamed, output " + Output(0) + ">")}'";
    /// <summary>The node with its inputs, outputs and attributes, for messages and debugging.</summary>
    public override string ToString() =>
        $"{Describe()}({string.Join(", ", Inputs)}) -> ({string.Join(", ", Outputs)}) {string.Join(" ", Attributes.Values)}";
}
