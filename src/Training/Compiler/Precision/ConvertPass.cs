using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// True-precision rewrite (Fabric's HalfPrecision / DoublePrecision convert_module + convert_input +
/// convert_output): fp32 initializers and Constant values become <c>storage</c> (so the parameters,
/// their gradients and optimizer state are stored in it), Casts to fp32 inside the graph cast to
/// <c>storage</c> instead, fp32 graph inputs are cast to <c>storage</c> at entry and fp32 graph outputs
/// cast back at exit (so logits and the loss are fp32). Operands of a different type variable that
/// must stay fp32 (Resize scales, ...) are left alone. The erf GELU is one op computed in fp32 with the model's own
/// constants and rounded once to 16 bits, as PyTorch's 16-bit GELU kernels do (see <see cref="AutocastPass"/>).
/// </summary>
public static class ConvertPass
{
    public static void Run(Model model, DataType storage)
    {
        if (storage is not (DataType.Float16 or DataType.BFloat16 or DataType.Double))
            throw new CompileException($"true precision needs float16, bfloat16 or double, not {storage.OnnxName()}");
        var g = model.Graph;
        ShapeInference.Infer(model);
        var b = new GraphBuilder(g, model.OpsetOf(""));
        var gelus = OpDtypes.IsHalf(storage) ? Fusion.ErfGeluFusion.Fuse(g) : new Fusion.ErfGeluFusion.Fused();
        var consumers = g.Consumers();
        // A GELU's constants stay fp32 (where only GELUs read them): the GELU computes in fp32.
        bool OnlyUntied(string v) => consumers.TryGetValue(v, out var cs) && cs.All(c => gelus.Contains(c) && c.Inputs[0] != v ||
            Enumerable.Range(0, c.Inputs.Count).Where(i => c.Inputs[i] == v).All(i => !OpDtypes.TiedInput(c, i) || c.OpType == "CastLike"));

        foreach (var (name, t) in g.Initializers.ToList())
            if (t.Type == DataType.Float && !OnlyUntied(name)) g.Initializers[name] = Convert(t, storage);
        foreach (var n in g.Nodes.Where(n => n.Domain == ""))
        {
            if (n.OpType == "Constant" && n.Attr("value")?.T is { Type: DataType.Float } ct && !OnlyUntied(n.Output(0)))
                n.Set(NodeAttribute.Of("value", Convert(ct, storage)));
            else if (n.OpType == "Constant" && n.Attr("value_float") is { } vf && !OnlyUntied(n.Output(0)))
            { n.Attributes.Remove("value_float"); n.Set(NodeAttribute.Of("value", Tensor.OfType("value", storage, [vf.F]))); }
            else if (n.OpType == "Constant" && n.Attr("value_floats") is { } vfs && !OnlyUntied(n.Output(0)))
            { n.Attributes.Remove("value_floats"); n.Set(NodeAttribute.Of("value", Tensor.OfType("value", storage, vfs.Floats.Select(x => (double)x).ToArray(), vfs.Floats.Length))); }
            else if (n.OpType == "Cast" && n.GetInt("to", 0) == (long)DataType.Float && !OnlyUntied(n.Output(0)))
                n.Set(NodeAttribute.Of("to", (long)storage));
            else if (n.OpType == "ConstantOfShape" && n.Attr("value")?.T is { Type: DataType.Float } cv && !OnlyUntied(n.Output(0)))
                n.Set(NodeAttribute.Of("value", Convert(cv, storage)));
        }
        foreach (var n in g.Nodes.Where(gelus.Contains).ToList())
        {
            // x cast to fp32 at the GELU's input, its fp32 result rounded once; a constant shared with other nodes was
            // converted with them and is read back in fp32.
            for (int k = 0; k < n.Inputs.Count; k++)
                if (k == 0 || Autodiff.GradientContext.ConstantValue(g, n.Inputs[k])?.Type != DataType.Float)
                {
                    var up = b.Unique($"{n.Inputs[k]}/gelu_fp32");
                    g.Nodes.Insert(g.Nodes.IndexOf(n), new Node("Cast", [n.Inputs[k]], [up], b.Unique("convert/Cast")).Set(NodeAttribute.Of("to", (long)DataType.Float)));
                    n.Inputs[k] = up;
                }
            var y = n.Output(0);
            var wide = n.Outputs[0] = b.Unique($"{y}/gelu_fp32");
            g.Nodes.Insert(g.Nodes.IndexOf(n) + 1, new Node("Cast", [wide], [y], b.Unique("convert/Cast")).Set(NodeAttribute.Of("to", (long)storage)));
        }
        Fusion.ErfGeluFusion.Unfuse(g, gelus);
        foreach (var i in g.Inputs.Where(i => i.Type.ElemType == DataType.Float).ToList())
        {
            var cast = b.Unique($"{i.Name}/to_{AutocastPass.Short(storage)}");
            foreach (var n in g.Nodes) for (int k = 0; k < n.Inputs.Count; k++) if (n.Inputs[k] == i.Name && OpDtypes.TiedInput(n, k)) n.Inputs[k] = cast;
            g.Nodes.Insert(0, new Node("Cast", [i.Name], [cast], b.Unique("convert/Cast")).Set(NodeAttribute.Of("to", (long)storage)));
        }
        // Untied fp32 operands whose source is now converted read a Cast back to fp32.
        foreach (var n in g.Nodes.ToList())
            for (int k = 0; k < n.Inputs.Count; k++)
                if (!OpDtypes.TiedInput(n, k) && n.Inputs[k].Length > 0 && g.Initializers.TryGetValue(n.Inputs[k], out var t) && t.Type == storage && n.OpType != "CastLike")
                {
                    var back = b.Unique($"{n.Inputs[k]}/fp32");
                    g.Nodes.Insert(0, new Node("Cast", [n.Inputs[k]], [back], b.Unique("convert/Cast")).Set(NodeAttribute.Of("to", (long)DataType.Float)));
                    n.Inputs[k] = back;
                }
        // Re-infer dtypes: forget the old float types of node outputs first.
        var produced = g.Nodes.SelectMany(n => n.Outputs).ToHashSet();
        foreach (var v in g.ValueTypes.Keys.Where(produced.Contains).ToList()) g.ValueTypes.Remove(v);
        foreach (var o in g.Outputs.Where(o => o.Type.ElemType == DataType.Float).ToList())
        {
            var renamed = b.Unique($"{o.Name}/{AutocastPass.Short(storage)}");
            AutocastPass.Rename(g, o.Name, renamed);
            g.Nodes.Add(new Node("Cast", [renamed], [o.Name], b.Unique("convert/Cast")).Set(NodeAttribute.Of("to", (long)DataType.Float)));
        }
        g.SortTopologically();
        ShapeInference.Infer(model);
        CastCleanup.Run(g);
    }

    /// <summary>A float tensor converted to <paramref name="t"/> (round to nearest even).</summary>
    public static Tensor Convert(Tensor src, DataType t)
    {
        if (src.Type == t) return src;
        ReadOnlySpan<float> v = src.Type == DataType.Float ? src.Span<float>() : src.ToFloats();
        var bytes = new byte[src.ElementCount * t.SizeOf()];
        switch (t)
        {
            case DataType.Float16:
                var h = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes.AsSpan());
                for (int i = 0; i < v.Length; i++) h[i] = (Half)v[i];
                break;
            case DataType.BFloat16:
                var u = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
                for (int i = 0; i < v.Length; i++) u[i] = Tensor.BFloat16Bits(v[i]);
                break;
            case DataType.Double:
                var d = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(bytes.AsSpan());
                for (int i = 0; i < v.Length; i++) d[i] = v[i];
                break;
            case DataType.Float:
                return Tensor.Float(src.Name, src.ToFloats(), src.Dims);
            default: throw new NotSupportedException(t.ToString());
        }
        return new Tensor(src.Name, t, src.Dims, bytes);
    }
}
