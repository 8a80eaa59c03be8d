namespace OrtFinetune.Training.Compiler.Autodiff;

/// <summary>How an op type behaves under differentiation.</summary>
public enum GradientKind
{
    /// <summary>A rule builds input gradients from output gradients.</summary>
    Rule,
    /// <summary>The op's outputs never carry a gradient (shapes, comparisons, indices, random numbers).</summary>
    NotDifferentiable,
}

/// <summary>
/// One registry entry. <see cref="Inputs"/> lists the input slots a gradient can flow to and
/// <see cref="Outputs"/> the output slots a gradient can flow from (null = all). Everything else
/// (shape inputs, indices, masks, statistics outputs) is cut from the differentiable path.
/// </summary>
public sealed record GradientRule(
    string OpType,
    string Domain,
    GradientKind Kind,
    int[]? Inputs,
    int[]? Outputs,
    Action<GradientContext>? Build)
{
    public bool InputIsDifferentiable(int i) => Kind == GradientKind.Rule && (Inputs == null || Inputs.Contains(i));
    public bool OutputIsDifferentiable(int i) => Kind == GradientKind.Rule && (Outputs == null || Outputs.Contains(i));
}

/// <summary>
/// The table of gradient rules, keyed by (domain, op type). Rule families register themselves.
/// An instance is passed to the compiler; <see cref="CreateDefault"/> gives the built-in rules to extend.
/// </summary>
public sealed class GradientRegistry
{
    readonly Dictionary<(string, string), GradientRule> _rules = new();

    public IEnumerable<GradientRule> Rules => _rules.Values;

    /// <summary>Registers a rule; <paramref name="inputs"/>/<paramref name="outputs"/> restrict the differentiable slots.</summary>
    public void Add(string opType, Action<GradientContext> build, int[]? inputs = null, int[]? outputs = null, string domain = "")
        => _rules[(domain, opType)] = new GradientRule(opType, domain, GradientKind.Rule, inputs, outputs, build);

    /// <summary>Marks ops whose outputs carry no gradient.</summary>
    public void NotDifferentiable(params string[] opTypes)
    {
        foreach (var op in opTypes) _rules[("", op)] = new GradientRule(op, "", GradientKind.NotDifferentiable, [], [], null);
    }

    public GradientRule? Find(string domain, string opType) => _rules.GetValueOrDefault((domain, opType));

    /// <summary>The built-in rules, built once, for callers that pass no registry; never changed.</summary>
    internal static GradientRegistry Default { get; } = CreateDefault();

    /// <summary>A new registry with every built-in rule family (add or replace rules in it freely).</summary>
    public static GradientRegistry CreateDefault()
    {
        var r = new GradientRegistry();
        Gradients.ElementwiseRules.Register(r);
        Gradients.ActivationRules.Register(r);
        Gradients.ReductionRules.Register(r);
        Gradients.ShapeRules.Register(r);
        Gradients.MatMulConvRules.Register(r);
        Gradients.PoolingRules.Register(r);
        Gradients.NormalizationRules.Register(r);
        Gradients.LossRules.Register(r);
        Gradients.NonDifferentiableOps.Register(r);
        Fusion.ErfGeluFusion.Register(r);
        return r;
    }
}
