using System.Text.RegularExpressions;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models.Weights;

public enum WeightNaming { Torchvision, Hf, Timm }

/// <summary>One of our parameters and the checkpoint tensors it comes from: one (same layout), or query, key, value (fused along axis 0).</summary>
public sealed record ParamSource(string Ours, IReadOnlyList<string> Keys, bool IsHead)
{
    public bool IsFused => Keys.Count == 3;
}

/// <summary>Our parameter names: torchvision's VisionTransformer state_dict, in its order (see <see cref="VitBuilder"/>).</summary>
public static class VitNames
{
    public const string ClassToken = "class_token", PatchWeight = "conv_proj.weight", PatchBias = "conv_proj.bias", PosEmbedding = "encoder.pos_embedding";
    public const string HeadWeight = "heads.head.weight", HeadBias = "heads.head.bias";
    public static readonly string[] LayerSuffixes =
    [
        "ln_1.weight", "ln_1.bias", "self_attention.in_proj_weight", "self_attention.in_proj_bias",
        "self_attention.out_proj.weight", "self_attention.out_proj.bias", "ln_2.weight", "ln_2.bias",
        "mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias",
    ];
    public static string Layer(int i) => $"encoder.layers.encoder_layer_{i}.";

    public static IEnumerable<string> All(int layers)
    {
        yield return ClassToken; yield return PatchWeight; yield return PatchBias; yield return PosEmbedding;
        for (int i = 0; i < layers; i++) foreach (var s in LayerSuffixes) yield return Layer(i) + s;
        yield return "encoder.ln.weight"; yield return "encoder.ln.bias"; yield return HeadWeight; yield return HeadBias;
    }

    static readonly Regex LayerName = new(@"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$", RegexOptions.Compiled);

    /// <summary>(layer index, suffix) of a layer parameter, or null for the others.</summary>
    public static (int Layer, string Suffix)? SplitLayer(string ours)
    {
        var m = LayerName.Match(ours);
        return m.Success ? (int.Parse(m.Groups[1].Value), m.Groups[2].Value) : null;
    }
}

/// <summary>
/// How one library names a ViT's parameters: for each of ours, the checkpoint keys it comes from. The maps
/// are plain tables; <see cref="CheckpointImport"/> does the loading and <see cref="WeightExport"/> the reverse.
/// </summary>
public abstract class NameMap
{
    public abstract WeightNaming Naming { get; }
    /// <summary>The LayerNorm epsilon of the library's ViT (HF: 1e-12; torchvision, timm: 1e-6).</summary>
    public abstract float DefaultEpsilon { get; }
    /// <summary>Matches a key of one encoder block; group 1 is the block index.</summary>
    public abstract Regex LayerKey { get; }
    protected abstract IReadOnlyList<string> Top(string ours);
    protected abstract IReadOnlyList<string> InLayer(int i, string suffix);
    /// <summary>Old or alternative spellings, rewritten to the ones the table uses.</summary>
    public virtual string Canonical(string key) => key;
    /// <summary>Tensors that have no counterpart in our model but are expected in such checkpoints (reported as unexpected, not errors).</summary>
    public virtual bool Ignorable(string key) => false;

    public IReadOnlyList<string> KeysFor(string ours) =>
        VitNames.SplitLayer(ours) is (int i, string s) ? InLayer(i, s) : Top(ours);

    public IReadOnlyList<ParamSource> Sources(int layers) =>
        VitNames.All(layers).Select(o => new ParamSource(o, KeysFor(o), o is VitNames.HeadWeight or VitNames.HeadBias)).ToList();

    /// <summary>Number of encoder blocks the keys mention (highest index + 1).</summary>
    public int CountLayers(IEnumerable<string> keys) =>
        keys.Select(k => LayerKey.Match(Canonical(k))).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value) + 1).DefaultIfEmpty(0).Max();

    public static NameMap For(WeightNaming n, IEnumerable<string>? keys = null) => n switch
    {
        WeightNaming.Torchvision => new TorchvisionNames(),
        WeightNaming.Hf => new HfNames(keys == null || keys.Any(k => k.StartsWith("vit.", StringComparison.Ordinal)) ? "vit." : ""),
        _ => new TimmNames(),
    };

    public static WeightNaming Parse(string text, string setting) => text.ToLowerInvariant() switch
    {
        "torchvision" or "tv" => WeightNaming.Torchvision,
        "hf" or "huggingface" or "hugging-face" or "transformers" => WeightNaming.Hf,
        "timm" => WeightNaming.Timm,
        _ => throw new ModelException($"{setting} '{text}': unknown weight naming (known: torchvision, hf, timm)"),
    };

    public static string Name(WeightNaming n) => n switch { WeightNaming.Torchvision => "torchvision", WeightNaming.Hf => "hf", _ => "timm" };

    /// <summary>
    /// The naming whose table covers the most of the checkpoint's keys; an error naming the file and a few
    /// keys when none covers any.
    /// </summary>
    public static NameMap Detect(Checkpoint ckpt)
    {
        var keys = ckpt.Tensors.Keys.ToList();
        var scored = Enum.GetValues<WeightNaming>().Select(n =>
        {
            var map = For(n, keys);
            var known = map.Sources(Math.Max(map.CountLayers(keys), 1)).SelectMany(s => s.Keys).ToHashSet();
            return (Map: map, Score: keys.Count(k => known.Contains(map.Canonical(k))));
        }).OrderByDescending(x => x.Score).ToList();
        if (scored[0].Score == 0)
            throw new ModelException($"{ckpt.Path}: cannot tell which library's ViT names these weights use (keys: {string.Join(", ", keys.Take(6))}{(keys.Count > 6 ? ", ..." : "")}); "
                + "expected torchvision (conv_proj.weight, encoder.layers...), Hugging Face (vit.embeddings..., vit.encoder.layer...) or timm (patch_embed.proj.weight, blocks...) names, or set --weights-format");
        return scored[0].Map;
    }
}

/// <summary>torchvision's VisionTransformer: our own names (older checkpoints spell the MLP layers linear_1/linear_2).</summary>
public sealed class TorchvisionNames : NameMap
{
    static readonly Regex Layer = new(@"^encoder\.layers\.encoder_layer_(\d+)\.", RegexOptions.Compiled);
    public override WeightNaming Naming => WeightNaming.Torchvision;
    public override float DefaultEpsilon => 1e-6f;
    public override Regex LayerKey => Layer;
    protected override IReadOnlyList<string> Top(string ours) => [ours];
    protected override IReadOnlyList<string> InLayer(int i, string suffix) => [VitNames.Layer(i) + suffix];
    public override string Canonical(string key) => key.Replace(".mlp.linear_1.", ".mlp.0.").Replace(".mlp.linear_2.", ".mlp.3.");
}

/// <summary>
/// Hugging Face transformers' ViTModel / ViTForImageClassification (modeling_vit.py): separate query, key and
/// value projections; ViTModel checkpoints have no "vit." prefix and carry a pooler the classifier does not use.
/// </summary>
public sealed class HfNames(string prefix) : NameMap
{
    readonly Regex _layer = new("^" + Regex.Escape(prefix) + @"encoder\.layer\.(\d+)\.", RegexOptions.Compiled);
    public string Prefix => prefix;
    public override WeightNaming Naming => WeightNaming.Hf;
    public override float DefaultEpsilon => 1e-12f;
    public override Regex LayerKey => _layer;

    protected override IReadOnlyList<string> Top(string ours) => ours switch
    {
        VitNames.ClassToken => [prefix + "embeddings.cls_token"],
        VitNames.PosEmbedding => [prefix + "embeddings.position_embeddings"],
        VitNames.PatchWeight => [prefix + "embeddings.patch_embeddings.projection.weight"],
        VitNames.PatchBias => [prefix + "embeddings.patch_embeddings.projection.bias"],
        "encoder.ln.weight" => [prefix + "layernorm.weight"],
        "encoder.ln.bias" => [prefix + "layernorm.bias"],
        VitNames.HeadWeight => ["classifier.weight"],
        VitNames.HeadBias => ["classifier.bias"],
        _ => throw new ArgumentException(ours),
    };

    protected override IReadOnlyList<string> InLayer(int i, string suffix)
    {
        var l = $"{prefix}encoder.layer.{i}.";
        string[] Qkv(string what) => [l + "attention.attention.query." + what, l + "attention.attention.key." + what, l + "attention.attention.value." + what];
        return suffix switch
        {
            "ln_1.weight" => [l + "layernorm_before.weight"],
            "ln_1.bias" => [l + "layernorm_before.bias"],
            "self_attention.in_proj_weight" => Qkv("weight"),
            "self_attention.in_proj_bias" => Qkv("bias"),
            "self_attention.out_proj.weight" => [l + "attention.output.dense.weight"],
            "self_attention.out_proj.bias" => [l + "attention.output.dense.bias"],
            "ln_2.weight" => [l + "layernorm_after.weight"],
            "ln_2.bias" => [l + "layernorm_after.bias"],
            "mlp.0.weight" => [l + "intermediate.dense.weight"],
            "mlp.0.bias" => [l + "intermediate.dense.bias"],
            "mlp.3.weight" => [l + "output.dense.weight"],
            "mlp.3.bias" => [l + "output.dense.bias"],
            _ => throw new ArgumentException(suffix),
        };
    }

    public override bool Ignorable(string key) =>
        key.StartsWith(prefix + "pooler.", StringComparison.Ordinal) || key == prefix + "embeddings.mask_token";
}

/// <summary>timm's vision_transformer.VisionTransformer (vit_*; class-token pooling, no LayerScale): fused qkv as torchvision's in_proj.</summary>
public sealed class TimmNames : NameMap
{
    static readonly Regex Layer = new(@"^blocks\.(\d+)\.", RegexOptions.Compiled);
    public override WeightNaming Naming => WeightNaming.Timm;
    public override float DefaultEpsilon => 1e-6f;
    public override Regex LayerKey => Layer;

    protected override IReadOnlyList<string> Top(string ours) => ours switch
    {
        VitNames.ClassToken => ["cls_token"],
        VitNames.PosEmbedding => ["pos_embed"],
        VitNames.PatchWeight => ["patch_embed.proj.weight"],
        VitNames.PatchBias => ["patch_embed.proj.bias"],
        "encoder.ln.weight" => ["norm.weight"],
        "encoder.ln.bias" => ["norm.bias"],
        VitNames.HeadWeight => ["head.weight"],
        VitNames.HeadBias => ["head.bias"],
        _ => throw new ArgumentException(ours),
    };

    protected override IReadOnlyList<string> InLayer(int i, string suffix)
    {
        var l = $"blocks.{i}.";
        return suffix switch
        {
            "ln_1.weight" => [l + "norm1.weight"],
            "ln_1.bias" => [l + "norm1.bias"],
            "self_attention.in_proj_weight" => [l + "attn.qkv.weight"],
            "self_attention.in_proj_bias" => [l + "attn.qkv.bias"],
            "self_attention.out_proj.weight" => [l + "attn.proj.weight"],
            "self_attention.out_proj.bias" => [l + "attn.proj.bias"],
            "ln_2.weight" => [l + "norm2.weight"],
            "ln_2.bias" => [l + "norm2.bias"],
            "mlp.0.weight" => [l + "mlp.fc1.weight"],
            "mlp.0.bias" => [l + "mlp.fc1.bias"],
            "mlp.3.weight" => [l + "mlp.fc2.weight"],
            "mlp.3.bias" => [l + "mlp.fc2.bias"],
            _ => throw new ArgumentException(suffix),
        };
    }
}
