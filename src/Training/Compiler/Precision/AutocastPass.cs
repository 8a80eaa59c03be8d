using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// Mixed-precision rewrite of a forward graph (PyTorch autocast, as a graph pass). Every node is
/// assigned a compute dtype:
/// <list type="bullet">
/// <item>ops in the low list (MatMul, Gemm, Conv, ...) run in the 16-bit type when the provider has
///   that kernel, else in fp32;</item>
/// <item>ops in the full list (Softmax, LayerNormalization, reductions, Exp/Log/Pow, losses) run in fp32;</item>
/// <item>all other ops run in the widest dtype among their float activation inputs (constants and
///   parameters do not vote: they follow the activations, i.e. weights are cast at use); an op whose
///   16-bit kernel is missing runs in fp32.</item>
/// </list>
/// A float input whose dtype differs from the node's compute dtype gets a Cast (one per value and
/// dtype, shared by all consumers; a value that is itself a widening cast of a 16-bit value is
/// replaced by that value instead of being cast back). Parameters stay fp32 initializers (master
/// weights); graph outputs keep their dtype. Autodiff's Cast rule then brings gradients back to fp32.
/// <para>
/// The erf GELU (five nodes, Fusion.ErfGeluFusion) is one op here, as in PyTorch: for a 16-bit input it is computed in
/// fp32 with the model's own constants and rounded once to the input's type (PyTorch's 16-bit GELU kernels compute in
/// float), not node by node in 16 bits with rounded constants. Where the provider lacks 16-bit kernels for its nodes, this
/// also holds two fp32 tensors of x's size at once instead of three (the fallback casts around each node).
/// </para>
/// </summary>
public static class AutocastPass
{
    public sealed record Result(int CastsInserted, int LowNodes, int KeptFp32ForMissingKernel);

    public static Result Run(Model model, DataType low, AutocastLists lists, IKernelAvailability? kernels = null)
    {
        if (!OpDtypes.IsHalf(low)) throw new CompileException($"autocast needs float16 or bfloat16, not {low.OnnxName()}");
        kernels ??= AllKernels.Instance;
        var g = model.Graph;
        ShapeInference.Infer(model);
        long opset = model.OpsetOf("");
        var b = new GraphBuilder(g, opset);
        var original = new Dictionary<string, DataType>();
        DataType Orig(string v) => original.TryGetValue(v, out var t) ? t : original[v] = g.TypeOf(v)?.ElemType ?? DataType.Undefined;
        var cur = new Dictionary<string, DataType>();
        DataType Cur(string v) => cur.TryGetValue(v, out var t) ? t : Orig(v);
        var constants = new HashSet<string>(g.Initializers.Keys);
        var constantNodes = new Dictionary<string, Node>();
        foreach (var n in g.Nodes) if (n.OpType == "Constant" && n.Domain == "") { constants.Add(n.Output(0)); constantNodes[n.Output(0)] = n; }

        var gelus = Fusion.ErfGeluFusion.Fuse(g);
        var castOf = new Dictionary<(string, DataType), string>();
        var widenedFrom = new Dictionary<string, string>();
        var nodes = new List<Node>(g.Nodes.Count * 2);
        int casts = 0, lowNodes = 0, missing = 0;

        string CastTo(string v, DataType t)
        {
            var vt = Cur(v);
            if (vt == t) return v;
            if (castOf.TryGetValue((v, t), out var c)) return c;
            if (widenedFrom.TryGetValue(v, out var src) && Cur(src) == t) return src;
            var name = b.Unique($"{v}/autocast_{Short(t)}");
            if (g.Initializers.TryGetValue(v, out var init) && init.ElementCount == 1 && OpDtypes.IsFloat32OrHalf(init.Type))
            {
                // A scalar constant becomes a constant of the compute type (not a Cast node): patterns that look for
                // constants (the erf-GELU composite, whose backward then keeps x alone) still find one.
                g.Initializers[name] = Tensor.OfType(name, t, init.ToDoubles(), init.Dims);
            }
            else if (constantNodes.TryGetValue(v, out var cn) && cn.Attr("value")?.T is { ElementCount: 1 } cv && OpDtypes.IsFloat32OrHalf(cv.Type))
                nodes.Add(new Node("Constant", [], [name], b.Unique("autocast/Constant")).Set(NodeAttribute.Of("value", Tensor.OfType("value", t, cv.ToDoubles(), cv.Dims))));
            else
            {
                nodes.Add(new Node("Cast", [v], [name], b.Unique("autocast/Cast")).Set(NodeAttribute.Of("to", (long)t)));
                casts++;
            }
            cur[name] = t;
            if (g.TypeOf(v) is { } tt) g.ValueTypes[name] = tt with { ElemType = t };
            if (t == DataType.Float && OpDtypes.IsHalf(vt)) widenedFrom[name] = v;
            castOf[(v, t)] = name;
            return name;
        }

        foreach (var n in g.Nodes)
        {
            var floatIn = Enumerable.Range(0, n.Inputs.Count)
                .Where(i => n.Inputs[i].Length > 0 && OpDtypes.IsFloat32OrHalf(Cur(n.Inputs[i])) && OpDtypes.TiedInput(n, i)).ToList();
            bool agnostic = n.Domain == "" && OpDtypes.Agnostic.Contains(n.OpType);
            if (agnostic || floatIn.Count == 0 || n.Inputs.Any(i => i.Length > 0 && Cur(i) == DataType.Double))
            {
                nodes.Add(n);
                continue;
            }
            DataType target;
            var geluInput = gelus.Contains(n) ? Cur(n.Inputs[0]) : DataType.Undefined;
            if (n.Domain != "" || lists.FullPrecision.Contains(n.OpType)) target = DataType.Float;
            else if (lists.LowPrecision.Contains(n.OpType)) target = low;
            else
            {
                var acts = floatIn.Where(i => !constants.Contains(n.Inputs[i])).Select(i => Cur(n.Inputs[i])).ToList();
                target = acts.Count > 0 && acts.All(OpDtypes.IsHalf) ? acts[0] : DataType.Float;
            }
            if (target != DataType.Float)
            {
                var q = KernelQuery.Of(n, g, opset, v => TypeAs(n, v, target, Cur));
                if (!kernels.Has(q)) { target = DataType.Float; missing++; }
                else lowNodes++;
            }
            foreach (var i in floatIn) n.Inputs[i] = CastTo(n.Inputs[i], target);
            for (int k = 0; k < n.Outputs.Count; k++)
            {
                var o = n.Outputs[k];
                if (o.Length == 0) continue;
                var ot = Orig(o);
                if (OpDtypes.IsFloat32OrHalf(ot) && OpDtypes.TiedOutput(n, k)) cur[o] = target;
            }
            nodes.Add(n);
            if (OpDtypes.IsHalf(geluInput))
            {
                // The GELU's fp32 result, rounded once to its input's type.
                var y = n.Output(0);
                var wide = n.Outputs[0] = b.Unique($"{y}/gelu_fp32");
                cur[wide] = DataType.Float;
                cur[y] = geluInput;
                if (g.TypeOf(y) is { } yt) g.ValueTypes[wide] = yt with { ElemType = DataType.Float };
                nodes.Add(new Node("Cast", [wide], [y], b.Unique("autocast/Cast")).Set(NodeAttribute.Of("to", (long)geluInput)));
                casts++;
            }
        }
        g.Nodes.Clear();
        g.Nodes.AddRange(nodes);
        Fusion.ErfGeluFusion.Unfuse(g, gelus);

        foreach (var (v, t) in cur)
            if (g.TypeOf(v) is { } tt && tt.ElemType != t && !g.Initializers.ContainsKey(v)) g.ValueTypes[v] = tt with { ElemType = t };

        // Model outputs keep their dtype: the producer writes a renamed value, a Cast restores the name.
        foreach (var o in g.Outputs)
        {
            if (Cur(o.Name) == o.Type.ElemType || !cur.ContainsKey(o.Name)) continue;
            var renamed = b.Unique($"{o.Name}/autocast_{Short(Cur(o.Name))}");
            Rename(g, o.Name, renamed);
            g.ValueTypes[renamed] = (g.ValueTypes.GetValueOrDefault(o.Name) ?? o.Type) with { ElemType = Cur(o.Name) };
            g.ValueTypes.Remove(o.Name);
            g.Nodes.Add(new Node("Cast", [renamed], [o.Name], b.Unique("autocast/Cast")).Set(NodeAttribute.Of("to", (long)o.Type.ElemType)));
            casts++;
        }
        CastCleanup.Run(g);
        g.SortTopologically();
        return new Result(casts, lowNodes, missing);
    }

    /// <summary>The dtype value <paramref name="v"/> would have if node <paramref name="n"/> computed in <paramref name="target"/>.</summary>
    internal static DataType? TypeAs(Node n, string v, DataType target, Func<string, DataType> cur)
    {
        int i = n.Inputs.IndexOf(v);
        if (i >= 0) return OpDtypes.IsFloat32OrHalf(cur(v)) && OpDtypes.TiedInput(n, i) ? target : cur(v);
        int k = n.Outputs.IndexOf(v);
        if (k >= 0) return OpDtypes.IsFloat32OrHalf(cur(v)) && OpDtypes.TiedOutput(n, k) ? target : cur(v);
        return null;
    }

    /// <summary>Renames value <paramref name="from"/> to <paramref name="to"/> in its producer and all consumers.</summary>
    internal static void Rename(Graph g, string from, string to)
    {
        foreach (var n in g.Nodes)
        {
            for (int i = 0; i < n.Inputs.Count; i++) if (n.Inputs[i] == from) n.Inputs[i] = to;
            for (int i = 0; i < n.Outputs.Count; i++) if (n.Outputs[i] == from) n.Outputs[i] = to;
        }
    }

    internal static string Short(DataType t) => t switch { DataType.Float16 => "fp16", DataType.BFloat16 => "bf16", DataType.Float => "fp32", DataType.Double => "fp64", _ => t.OnnxName() };
}
