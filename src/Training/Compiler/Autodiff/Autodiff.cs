using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Autodiff;

/// <summary>
/// Reverse-mode differentiation over an ONNX graph. Walks the nodes between the parameters and the
/// loss in reverse topological order, asks each node's rule for the input gradients it needs, and
/// sums gradients of values used more than once. Emits only standard ONNX nodes into the same graph.
/// </summary>
public static class Autodiff
{
    /// <summary>
    /// Appends the backward graph of <paramref name="loss"/> (a scalar) with respect to
    /// <paramref name="wrt"/> and returns the gradient value names, in the order of <paramref name="wrt"/>.
    /// Gradients are named <c>&lt;value&gt;_grad</c> where possible. Values in <paramref name="wrt"/> that the
    /// loss does not depend on get zeros. The graph must use ai.onnx opset <see cref="TrainingCompiler.MinOpset"/> or newer.
    /// </summary>
    public static IReadOnlyList<string> Differentiate(Graph g, long opset, string loss, IReadOnlyList<string> wrt,
        GradientRegistry? registry = null, string? seed = null)
    {
        if (opset < TrainingCompiler.MinOpset)
            throw new CompileException($"ai.onnx opset {opset}: differentiation needs opset {TrainingCompiler.MinOpset} or newer");
        registry ??= GradientRegistry.Default;
        g.SortTopologically();
        var forwardNodes = g.Nodes.ToList();

        // 1. Forward: which values depend on a wrt value through differentiable slots, and on which one.
        var origin = new Dictionary<string, string>();
        foreach (var w in wrt)
        {
            var t = g.TypeOf(w) ?? throw new CompileException($"parameter '{w}' is not a value of the graph");
            if (!t.ElemType.IsFloat()) throw new CompileException($"parameter '{w}' has type {t.ElemType.OnnxName()}; only floating-point values can be trained");
            origin[w] = w;
        }
        foreach (var n in forwardNodes)
        {
            var rule = registry.Find(n.Domain, n.OpType);
            if (rule?.Kind == GradientKind.NotDifferentiable) continue;
            string? from = null;
            for (int i = 0; i < n.Inputs.Count && from == null; i++)
                if (n.Inputs[i].Length > 0 && (rule == null || rule.InputIsDifferentiable(i)) && origin.TryGetValue(n.Inputs[i], out var o)) from = o;
            if (from == null) continue;
            for (int k = 0; k < n.Outputs.Count; k++)
                if (n.Outputs[k].Length > 0 && (rule == null || rule.OutputIsDifferentiable(k)) && IsFloat(g, n.Outputs[k]))
                    origin.TryAdd(n.Outputs[k], from);
        }
        if (!origin.ContainsKey(loss))
            throw new CompileException($"the loss '{loss}' does not depend on any trainable parameter");
        var lossType = g.TypeOf(loss);
        if (lossType?.Shape is { Length: > 0 } ls && ls.Any(d => d.Value != 1))
            throw new CompileException($"the loss '{loss}' must be a scalar, but its shape is {lossType}");

        // 2. Backward: which of those values the loss depends on.
        var needed = new HashSet<string> { loss };
        for (int k = forwardNodes.Count - 1; k >= 0; k--)
        {
            var n = forwardNodes[k];
            var rule = registry.Find(n.Domain, n.OpType);
            bool active = false;
            for (int j = 0; j < n.Outputs.Count; j++)
                if (needed.Contains(n.Outputs[j]) && origin.ContainsKey(n.Outputs[j]) && (rule == null || rule.OutputIsDifferentiable(j))) active = true;
            if (!active) continue;
            for (int i = 0; i < n.Inputs.Count; i++)
                if (n.Inputs[i].Length > 0 && origin.ContainsKey(n.Inputs[i]) && (rule == null || rule.InputIsDifferentiable(i)))
                    needed.Add(n.Inputs[i]);
        }

        // 3. Reverse sweep.
        var b = new GraphBuilder(g, opset);
        var contributions = new Dictionary<string, List<string>>();
        void Contribute(string value, string grad)
        {
            if (!contributions.TryGetValue(value, out var l)) contributions[value] = l = new List<string>();
            l.Add(grad);
        }
        string SumOf(string value)
        {
            var l = contributions[value];
            if (l.Count > 1)
            {
                b.Prefix = value + "_grad";
                var s = b.Sum(l);
                l.Clear(); l.Add(s);
            }
            return l[0];
        }
        Contribute(loss, seed ?? b.Const(Tensor.OfType("", lossType!.ElemType, [1.0], lossType.Shape?.Select(d => d.Value ?? 1).ToArray() ?? []), "loss_grad_seed"));

        for (int k = forwardNodes.Count - 1; k >= 0; k--)
        {
            var n = forwardNodes[k];
            var rule = registry.Find(n.Domain, n.OpType);
            var outGrads = new string?[n.Outputs.Count];
            bool any = false;
            for (int j = 0; j < n.Outputs.Count; j++)
            {
                var o = n.Outputs[j];
                if (o.Length == 0 || !needed.Contains(o) || !origin.ContainsKey(o) || !contributions.ContainsKey(o)) continue;
                if (rule != null && !rule.OutputIsDifferentiable(j)) continue;
                outGrads[j] = SumOf(o);
                any = true;
            }
            if (!any) continue;
            var need = new bool[n.Inputs.Count];
            for (int i = 0; i < n.Inputs.Count; i++)
                need[i] = n.Inputs[i].Length > 0 && needed.Contains(n.Inputs[i]) && origin.ContainsKey(n.Inputs[i]) && IsFloat(g, n.Inputs[i])
                          && (rule == null || rule.InputIsDifferentiable(i));
            if (!need.Any(x => x)) continue;
            if (rule == null || rule.Build == null)
            {
                int i = Array.IndexOf(need, true);
                throw new CompileException(
                    $"no gradient rule for op '{(n.Domain.Length > 0 ? n.Domain + "." : "")}{n.OpType}': {n.Describe()} lies on the differentiable path from parameter '{origin[n.Inputs[i]]}' to the loss. " +
                    "Freeze that parameter, or add a rule for the op.");
            }
            b.Prefix = (n.Name.Length > 0 ? n.Name : n.Output(0)) + "_grad";
            var ctx = new GradientContext(n, b, outGrads, need);
            try { rule.Build(ctx); }
            catch (CompileException) { throw; }
            catch (Exception e) when (e is OnnxFormatException or InvalidOperationException or NotSupportedException or ArgumentException)
            {
                throw new CompileException($"{n.Describe()}: gradient rule failed: {e.Message}", e);
            }
            for (int i = 0; i < need.Length; i++)
            {
                if (!need[i]) continue;
                var gi = ctx.InputGradient(i) ?? throw new CompileException($"the gradient rule of {n.OpType} produced no gradient for input {i} ('{n.Inputs[i]}') of {n.Describe()}");
                Contribute(n.Inputs[i], gi);
            }
        }

        // 4. Collect parameter gradients under their interface names. The producing node's output is
        // renamed in place when nothing else reads it (no copy); otherwise an Identity names it.
        b.Prefix = "";
        var renamed = new Dictionary<string, string>();
        var result = new List<string>();
        foreach (var w in wrt)
        {
            var name = b.Unique(w + "_grad");
            string grad = contributions.ContainsKey(w) ? SumOf(w) : b.ZerosLike(w, g.TypeOf(w)!.ElemType);
            if (renamed.TryGetValue(grad, out var already))
            {
                g.Nodes.Add(new Node("Identity", [already], [name], b.Unique("Identity")));
            }
            else if (g.Producers().TryGetValue(grad, out var producer) && !g.Consumers().ContainsKey(grad)
                     && !g.Outputs.Any(o => o.Name == grad) && !wrt.Contains(grad))
            {
                producer.Outputs[producer.Outputs.IndexOf(grad)] = name;
                if (g.ValueTypes.Remove(grad, out var t)) g.ValueTypes[name] = t;
                renamed[grad] = name;
            }
            else g.Nodes.Add(new Node("Identity", [grad], [name], b.Unique("Identity")));
            result.Add(name);
        }
        return result;
    }

    /// <summary>
    /// The subset of <paramref name="candidates"/> from which a gradient can reach <paramref name="loss"/>
    /// through differentiable slots and floating-point values (the trainable parameters by default).
    /// </summary>
    public static HashSet<string> ReachingLoss(Graph g, string loss, IEnumerable<string> candidates, GradientRegistry? registry = null)
    {
        registry ??= GradientRegistry.Default;
        var needed = new HashSet<string> { loss };
        for (int k = g.Nodes.Count - 1; k >= 0; k--)
        {
            var n = g.Nodes[k];
            var rule = registry.Find(n.Domain, n.OpType);
            if (rule?.Kind == GradientKind.NotDifferentiable) continue;
            bool active = false;
            for (int j = 0; j < n.Outputs.Count; j++)
                if (needed.Contains(n.Outputs[j]) && IsFloat(g, n.Outputs[j]) && (rule == null || rule.OutputIsDifferentiable(j))) active = true;
            if (!active) continue;
            for (int i = 0; i < n.Inputs.Count; i++)
                if (n.Inputs[i].Length > 0 && IsFloat(g, n.Inputs[i]) && (rule == null || rule.InputIsDifferentiable(i)))
                    needed.Add(n.Inputs[i]);
        }
        return candidates.Where(needed.Contains).ToHashSet();
    }

    static bool IsFloat(Graph g, string v) => g.TypeOf(v) is not { } t || t.ElemType == DataType.Undefined || t.ElemType.IsFloat();
}
