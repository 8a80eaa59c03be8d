using System.Runtime.InteropServices;
using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Plugins.Models;

/// <summary>
/// Builds torchvision's VisionTransformer forward pass (eval semantics, dropout 0) as an opset-17
/// ONNX graph whose initializers carry torchvision's state_dict names and shapes.
/// <para>Layout: tokens are kept as a 2-D (N*S, D) matrix through the encoder, so every linear layer
/// is one Gemm(transB=1) on the torch-layout weight (no weight transposes, fused bias); attention
/// reshapes to (N, H, S, d) around two batched MatMuls. LayerNormalization (axis -1, eps 1e-6),
/// Softmax(axis -1) with the 1/sqrt(d) scale applied to q, and GELU as 0.5*x*(1+erf(x/sqrt 2)).
/// The class token is taken before the final LayerNorm (LayerNorm is per token, so this equals
/// torchvision's ln-then-select).</para>
/// </summary>
public static class VitBuilder
{
    public const long Opset = 17;
    public const string InputName = "input", OutputName = "logits", BatchSymbol = "N";
    public const string MetaHeads = "ortfinetune.vit.heads", MetaEpsilon = "ortfinetune.vit.layer_norm_eps", MetaImageSize = "ortfinetune.vit.image_size";

    delegate void Fill(Span<float> values);

    public static Model Build(VitConfig c, int seed = 0)
    {
        c.Validate();
        var model = new Model { ProducerName = "OrtFinetune.VitBuilder" };
        model.Opsets[""] = Opset;
        model.Metadata["ortfinetune.architecture"] = c.ToString();
        // Read back by the safetensors export (config.json of the Hugging Face naming).
        model.Metadata[MetaHeads] = c.Heads.ToString(System.Globalization.CultureInfo.InvariantCulture);
        model.Metadata[MetaEpsilon] = c.LayerNormEpsilon.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        model.Metadata[MetaImageSize] = c.ImageSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var g = model.Graph;
        g.Name = "vision_transformer";
        var init = new WeightInit(seed);
        long D = c.Hidden, M = c.MlpDim, C = c.Channels, P = c.PatchSize, S = c.SeqLength, H = c.Heads, hd = c.HeadDim;

        // Parameters first, in torchvision's state_dict order.
        void Param(string name, long[] dims, Fill fill)
        {
            long n = dims.Aggregate(1L, (a, d) => checked(a * d));
            var bytes = new byte[checked(n * 4)];
            fill(MemoryMarshal.Cast<byte, float>(bytes.AsSpan()));
            g.Initializers[name] = new Tensor(name, DataType.Float, dims, bytes);
        }
        long fanIn = C * P * P;
        Param("class_token", [1, 1, D], WeightInit.Zeros);
        Param("conv_proj.weight", [D, C, P, P], s => init.TruncNormal(s, Math.Sqrt(1.0 / fanIn)));
        Param("conv_proj.bias", [D], WeightInit.Zeros);
        Param("encoder.pos_embedding", [1, S, D], s => init.Normal(s, 0.02));
        for (int i = 0; i < c.Layers; i++)
        {
            var l = $"encoder.layers.encoder_layer_{i}.";
            Param(l + "ln_1.weight", [D], WeightInit.Ones);
            Param(l + "ln_1.bias", [D], WeightInit.Zeros);
            Param(l + "self_attention.in_proj_weight", [3 * D, D], s => init.XavierUniform(s, 3 * D, D));
            Param(l + "self_attention.in_proj_bias", [3 * D], WeightInit.Zeros);
            Param(l + "self_attention.out_proj.weight", [D, D], s => init.LinearDefault(s, D));
            Param(l + "self_attention.out_proj.bias", [D], WeightInit.Zeros);
            Param(l + "ln_2.weight", [D], WeightInit.Ones);
            Param(l + "ln_2.bias", [D], WeightInit.Zeros);
            Param(l + "mlp.0.weight", [M, D], s => init.XavierUniform(s, M, D));
            Param(l + "mlp.0.bias", [M], s => init.Normal(s, 1e-6));
            Param(l + "mlp.3.weight", [D, M], s => init.XavierUniform(s, D, M));
            Param(l + "mlp.3.bias", [D], s => init.Normal(s, 1e-6));
        }
        Param("encoder.ln.weight", [D], WeightInit.Ones);
        Param("encoder.ln.bias", [D], WeightInit.Zeros);
        Param("heads.head.weight", [c.NumClasses, D], WeightInit.Zeros);
        Param("heads.head.bias", [c.NumClasses], WeightInit.Zeros);

        g.Inputs.Add(new ValueInfo(InputName, new TensorType(DataType.Float,
            [new Dim(BatchSymbol), new Dim(C), new Dim(c.ImageSize), new Dim(c.ImageSize)])));
        g.Outputs.Add(new ValueInfo(OutputName, new TensorType(DataType.Float, [new Dim(BatchSymbol), new Dim(c.NumClasses)])));

        var b = new GraphBuilder(g, Opset);
        b.Reserve(OutputName);
        var consts = new Dictionary<float, string>();
        string F(float v)
        {
            if (!consts.TryGetValue(v, out var name))
                consts[v] = name = b.Op("Constant", [], NodeAttribute.Of("value", Tensor.Float("value", [v])));
            return name;
        }
        string Gemm(string x, string w, string bias) => b.Op("Gemm", [x, w, bias], NodeAttribute.Of("transB", 1L));
        string LayerNorm(string x, string w, string bias) => b.Op("LayerNormalization", [x, w, bias],
            NodeAttribute.Of("axis", -1L), NodeAttribute.Of("epsilon", c.LayerNormEpsilon));

        // Patch embedding -> (N, P, D).
        string tokens;
        long grid = c.GridSize;
        if (c.PatchEmbedding == PatchEmbedding.Conv)
        {
            b.Prefix = "conv_proj";
            var conv = b.Op("Conv", [InputName, "conv_proj.weight", "conv_proj.bias"],
                NodeAttribute.Of("kernel_shape", new[] { P, P }), NodeAttribute.Of("strides", new[] { P, P }));
            var flat = b.Reshape(conv, b.Ints(0, D, c.Patches));          // (N, D, P)
            tokens = b.Transpose(flat, 0, 2, 1);                            // (N, P, D)
        }
        else
        {
            b.Prefix = "patch_embed";
            var x6 = b.Reshape(InputName, b.Ints(-1, C, grid, P, grid, P));  // (N, C, gh, p, gw, p)
            var xt = b.Transpose(x6, 0, 2, 4, 1, 3, 5);                       // (N, gh, gw, C, p, p)
            var rows = b.Reshape(xt, b.Ints(-1, C * P * P));                  // (N*gh*gw, C*p*p)
            var w2 = b.Reshape("conv_proj.weight", b.Ints(D, C * P * P));     // (D, C*p*p)
            var emb = Gemm(rows, w2, "conv_proj.bias");                       // (N*P, D)
            tokens = b.Reshape(emb, b.Ints(-1, c.Patches, D));
        }

        // Class token, position embedding; then tokens as (N*S, D).
        b.Prefix = "embed";
        var batch = b.ShapeSlice(InputName, 0, 1);
        var clsShape = b.Concat(0, batch, b.Ints(1, D));
        var cls = b.Expand("class_token", clsShape);
        var seq = b.Concat(1, cls, tokens);
        var x = b.Reshape(b.Add(seq, "encoder.pos_embedding"), b.Ints(-1, D));

        var scale = F((float)(1.0 / Math.Sqrt(hd)));
        for (int i = 0; i < c.Layers; i++)
        {
            var l = $"encoder.layers.encoder_layer_{i}.";
            b.Prefix = $"encoder_layer_{i}/attention";
            var h = LayerNorm(x, l + "ln_1.weight", l + "ln_1.bias");
            var qkv = Gemm(h, l + "self_attention.in_proj_weight", l + "self_attention.in_proj_bias");   // (N*S, 3D)
            var parts = b.OpN("Split", [qkv, b.Ints(D, D, D)], 3, NodeAttribute.Of("axis", 1L));
            string Heads(string t, params long[] perm) => b.Transpose(b.Reshape(t, b.Ints(-1, S, H, hd)), perm);
            var q = b.Mul(Heads(parts[0], 0, 2, 1, 3), scale);     // (N, H, S, d)
            var kT = Heads(parts[1], 0, 2, 3, 1);                  // (N, H, d, S)
            var v = Heads(parts[2], 0, 2, 1, 3);                   // (N, H, S, d)
            var attn = b.Op("Softmax", [b.MatMul(q, kT)], NodeAttribute.Of("axis", -1L));
            var ctx = b.Reshape(b.Transpose(b.MatMul(attn, v), 0, 2, 1, 3), b.Ints(-1, D));
            var o = Gemm(ctx, l + "self_attention.out_proj.weight", l + "self_attention.out_proj.bias");
            x = b.Add(o, x);

            b.Prefix = $"encoder_layer_{i}/mlp";
            var y = LayerNorm(x, l + "ln_2.weight", l + "ln_2.bias");
            var u = Gemm(y, l + "mlp.0.weight", l + "mlp.0.bias");
            var gelu = b.Mul(b.Mul(u, b.Add(b.Op("Erf", [b.Div(u, F(MathF.Sqrt(2f)))]), F(1f))), F(0.5f));
            x = b.Add(x, Gemm(gelu, l + "mlp.3.weight", l + "mlp.3.bias"));
        }

        b.Prefix = "head";
        var clsOut = b.Op("Gather", [b.Reshape(x, b.Ints(-1, S, D)), b.IntScalar(0)], NodeAttribute.Of("axis", 1L));   // (N, D)
        var normed = LayerNorm(clsOut, "encoder.ln.weight", "encoder.ln.bias");
        b.AddNode("Gemm", [normed, "heads.head.weight", "heads.head.bias"], [OutputName], "", NodeAttribute.Of("transB", 1L));
        return model;
    }

    /// <summary>Number of float parameters among the model's initializers.</summary>
    public static long CountParameters(Model m) =>
        m.Graph.Initializers.Values.Where(t => t.Type.IsFloat()).Sum(t => t.ElementCount);
}
