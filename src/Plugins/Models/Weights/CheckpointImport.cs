using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Models.Weights;

/// <summary>The ViT a checkpoint holds, read from its tensor shapes and config.json (heads and epsilon only from the config).</summary>
public sealed record CheckpointArchitecture(
    WeightNaming Naming, int Hidden, int Layers, int MlpDim, int PatchSize, int Channels, int ImageSize, int? Classes, int? Heads, float Epsilon, string EpsilonSource)
{
    public int Grid => ImageSize / PatchSize;

    /// <summary>A model config for this checkpoint; heads from the config, else hidden/64 (every standard ViT's head size).</summary>
    public VitConfig ToConfig(int numClasses, int imageSize, int channels, List<string> notes)
    {
        int heads = Heads ?? (Hidden % 64 == 0 ? Hidden / 64 : throw new ModelException(
            $"the weights do not say how many attention heads the model has (no config.json with num_attention_heads / num_heads) and hidden size {Hidden} is not a multiple of 64; add a config.json or choose a --model"));
        if (Heads == null) notes.Add($"attention heads not in a config.json: assumed hidden/64 = {heads}");
        return new VitConfig
        {
            ImageSize = imageSize > 0 ? imageSize : ImageSize, PatchSize = PatchSize, Layers = Layers, Heads = heads, Hidden = Hidden, MlpDim = MlpDim,
            Channels = channels, NumClasses = numClasses, LayerNormEpsilon = Epsilon,
        };
    }

    public override string ToString() =>
        $"{NameMap.Name(Naming)} ViT: image {ImageSize}, patch {PatchSize}, {Layers} layers, {(Heads is int h ? h + " heads, " : "")}hidden {Hidden}, mlp {MlpDim}, {Channels} channels{(Classes is int c ? $", {c} classes" : "")}, LayerNorm eps {Epsilon:G3} ({EpsilonSource})";
}

/// <summary>What loading a checkpoint did: printed, and saved in the run folder.</summary>
public sealed class CheckpointLoadReport
{
    public required string Path { get; init; }
    public required WeightNaming Naming { get; init; }
    public required string NamingSource { get; init; }
    public List<string> Loaded { get; } = new();
    /// <summary>Our parameters the checkpoint lacks (only the head may be; it keeps its fresh initialization).</summary>
    public List<string> Missing { get; } = new();
    /// <summary>Checkpoint tensors with no counterpart (e.g. HF's pooler).</summary>
    public List<string> Unexpected { get; } = new();
    /// <summary>Tensors changed in shape on the way (position table resampled, head replaced).</summary>
    public List<string> Reshaped { get; } = new();
    public List<string> Notes { get; } = new();
    public SortedDictionary<string, int> SourceDTypes { get; } = new();

    public string Summary =>
        $"loaded {Loaded.Count} tensors from {Path} ({NameMap.Name(Naming)} naming, {NamingSource}; {string.Join(", ", SourceDTypes.Select(kv => $"{kv.Value} {kv.Key}"))})"
        + (Missing.Count > 0 ? $"; missing {Missing.Count}" : "") + (Unexpected.Count > 0 ? $"; unexpected {Unexpected.Count}" : "")
        + (Reshaped.Count > 0 ? $"; reshaped {Reshaped.Count}" : "");

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"weights: {Path}");
        sb.AppendLine($"naming: {NameMap.Name(Naming)} ({NamingSource})");
        sb.AppendLine($"source dtypes: {string.Join(", ", SourceDTypes.Select(kv => $"{kv.Key} x{kv.Value}"))} (read as float32; the precision policy converts to its storage type)");
        void List(string title, List<string> items)
        {
            sb.AppendLine($"{title} ({items.Count}):");
            foreach (var i in items) sb.AppendLine("  " + i);
        }
        List("loaded", Loaded);
        List("missing", Missing);
        List("unexpected", Unexpected);
        List("reshaped", Reshaped);
        foreach (var n in Notes) sb.AppendLine("note: " + n);
        return sb.ToString();
    }
}

/// <summary>
/// Loads a torchvision, Hugging Face or timm ViT checkpoint into a built ViT (<see cref="VitBuilder"/>): maps the
/// names, fuses HF's query/key/value into in_proj, converts F16/BF16/F64 to float32, resamples the position table
/// to the model's patch grid, and leaves a head of another class count freshly initialized. Wrong shapes, unknown
/// tensors, and q/k/v sets with a part missing are errors naming the file, the tensor and both shapes.
/// </summary>
public static class CheckpointImport
{
    /// <summary>The naming: forced (<paramref name="format"/> not null/"auto") or detected from the keys.</summary>
    public static (NameMap Map, string Source) ResolveNaming(Checkpoint ckpt, string? format)
    {
        if (string.IsNullOrEmpty(format) || format.Equals("auto", StringComparison.OrdinalIgnoreCase))
            return (NameMap.Detect(ckpt), "detected from the keys");
        return (NameMap.For(NameMap.Parse(format, "--weights-format"), ckpt.Tensors.Keys), "set by --weights-format");
    }

    public static CheckpointArchitecture Architecture(Checkpoint ckpt, NameMap map)
    {
        CheckpointTensor Need(string ours)
        {
            var key = map.KeysFor(ours)[0];
            return ckpt.Tensors.Values.FirstOrDefault(t => map.Canonical(t.Name) == key)
                ?? throw new ModelException($"{ckpt.Path}: no tensor '{key}' ({NameMap.Name(map.Naming)} name of {ours}); is it a {NameMap.Name(map.Naming)} ViT checkpoint?");
        }
        var patch = Need(VitNames.PatchWeight);
        if (patch.Shape.Length != 4 || patch.Shape[2] != patch.Shape[3])
            throw new ModelException($"{patch.File.Path}: tensor '{patch.Name}' has shape {patch.ShapeText}; expected a square patch convolution [hidden, channels, p, p]");
        int hidden = (int)patch.Shape[0], channels = (int)patch.Shape[1], p = (int)patch.Shape[2];
        var pos = Need(VitNames.PosEmbedding);
        int? grid = pos.Shape.Length == 3 && pos.Shape[0] == 1 && pos.Shape[2] == hidden ? PositionEmbedding.GridOf(pos.Shape[1]) : null;
        if (grid == null)
            throw new ModelException($"{pos.File.Path}: tensor '{pos.Name}' has shape {pos.ShapeText}; expected [1, 1 + g*g, {hidden}] (class token plus a square patch grid)");
        int layers = map.CountLayers(ckpt.Tensors.Keys);
        if (layers == 0) throw new ModelException($"{ckpt.Path}: no encoder blocks found ({NameMap.Name(map.Naming)} naming)");
        var fc1 = Need(VitNames.Layer(0) + "mlp.0.weight");
        if (fc1.Shape.Length != 2 || fc1.Shape[1] != hidden)
            throw new ModelException($"{fc1.File.Path}: tensor '{fc1.Name}' has shape {fc1.ShapeText}; expected [mlp, {hidden}]");
        var headKey = map.KeysFor(VitNames.HeadWeight)[0];
        int? classes = ckpt.Tensors.TryGetValue(headKey, out var head) && head.Shape.Length == 2 ? (int)head.Shape[0] : null;

        int? heads = ckpt.ConfigInt("num_attention_heads", "num_heads", "model_args.num_heads");
        float eps = map.DefaultEpsilon;
        string epsSource = $"{NameMap.Name(map.Naming)}'s default";
        if (ckpt.ConfigNumber("layer_norm_eps", "model_args.norm_eps") is double e) { eps = (float)e; epsSource = "config.json"; }

        // config.json, when present, must describe these tensors.
        void Agree(string[] keys, int actual, string what)
        {
            if (ckpt.ConfigInt(keys) is int v && v != actual)
                throw new ModelException($"{ckpt.ConfigPath}: {keys.First(k => ckpt.ConfigInt(k) != null)} = {v}, but the weights have {what} {actual}");
        }
        Agree(["hidden_size", "model_args.embed_dim"], hidden, "hidden size");
        Agree(["num_hidden_layers", "model_args.depth"], layers, "layers");
        Agree(["intermediate_size"], (int)fc1.Shape[0], "mlp size");
        Agree(["patch_size", "model_args.patch_size"], p, "patch size");
        if (heads is int h && (h <= 0 || hidden % h != 0))
            throw new ModelException($"{ckpt.ConfigPath}: {h} attention heads do not divide the hidden size {hidden}");
        return new CheckpointArchitecture(map.Naming, hidden, layers, (int)fc1.Shape[0], p, channels, grid.Value * p, classes, heads, eps, epsSource);
    }

    /// <summary>Loads the checkpoint into <paramref name="model"/>, built from <paramref name="config"/> with <see cref="VitBuilder"/>.</summary>
    public static CheckpointLoadReport Load(Model model, VitConfig config, Checkpoint ckpt, NameMap map, string namingSource)
    {
        var report = new CheckpointLoadReport { Path = ckpt.Path, Naming = map.Naming, NamingSource = namingSource };
        var g = model.Graph;
        var byCanonical = new Dictionary<string, CheckpointTensor>(StringComparer.Ordinal);
        foreach (var t in ckpt.Tensors.Values)
            if (!byCanonical.TryAdd(map.Canonical(t.Name), t))
                throw new ModelException($"{t.File.Path}: tensor '{t.Name}' and '{byCanonical[map.Canonical(t.Name)].Name}' are two spellings of the same parameter");
        var used = new HashSet<string>(StringComparer.Ordinal);
        int ckptLayers = map.CountLayers(ckpt.Tensors.Keys);
        if (ckptLayers != config.Layers)
            throw new ModelException($"{ckpt.Path}: the weights have {ckptLayers} encoder blocks but the model has {config.Layers} (choose the matching --model, or --model auto)");

        foreach (var src in map.Sources(config.Layers))
        {
            if (!g.Initializers.TryGetValue(src.Ours, out var target)) throw new InvalidOperationException($"the built model has no '{src.Ours}'");
            var parts = src.Keys.Select(k => byCanonical.GetValueOrDefault(k)).ToList();
            if (parts.All(x => x == null))
            {
                if (src.IsHead)
                {
                    report.Missing.Add($"{src.Ours} (checkpoint '{src.Keys[0]}'): not in the weights; the head keeps its fresh initialization");
                    continue;
                }
                throw new ModelException($"{ckpt.Path}: the weights lack '{string.Join("', '", src.Keys)}' ({NameMap.Name(map.Naming)} name of the model's '{src.Ours}' [{string.Join(", ", target.Dims)}])");
            }
            if (parts.Any(x => x == null))
            {
                var present = src.Keys.Where((k, i) => parts[i] != null).ToList();
                var absent = src.Keys.Where((k, i) => parts[i] == null).ToList();
                throw new ModelException($"{parts.First(x => x != null)!.File.Path}: tensor '{present[0]}' has no matching '{string.Join("', '", absent)}' "
                    + $"(query, key and value are fused into the model's '{src.Ours}'; all three are needed)");
            }
            foreach (var t in parts) { used.Add(t!.Name); report.SourceDTypes[t.Entry.DType] = report.SourceDTypes.GetValueOrDefault(t.Entry.DType) + 1; }

            // Shape as the model sees it (q, k, v concatenated along axis 0).
            long[] shape;
            if (src.IsFused)
            {
                var s0 = parts[0]!.Shape;
                foreach (var t in parts)
                    if (!t!.Shape.SequenceEqual(s0))
                        throw new ModelException($"{t.File.Path}: tensor '{t.Name}' has shape {t.ShapeText} but '{parts[0]!.Name}' has {parts[0]!.ShapeText}; query, key and value must have one shape");
                shape = s0.Length == 0 ? [3] : [3 * s0[0], .. s0.Skip(1)];
            }
            else shape = parts[0]!.Shape;
            string What() => src.IsFused ? $"'{string.Join("' + '", src.Keys)}' (fused: [{string.Join(", ", shape)}])" : $"'{parts[0]!.Name}' {parts[0]!.ShapeText}";

            if (!shape.SequenceEqual(target.Dims))
            {
                if (src.IsHead && shape.Length == target.Dims.Length && shape.Skip(1).SequenceEqual(target.Dims.Skip(1)))
                {
                    report.Reshaped.Add($"{src.Ours}: head replaced, the weights' {What()} has {shape[0]} classes, the model {target.Dims[0]} (fresh initialization)");
                    continue;
                }
                if (src.Ours == VitNames.PosEmbedding && shape.Length == 3 && target.Dims.Length == 3 && shape[2] == target.Dims[2]
                    && PositionEmbedding.GridOf(shape[1]) is int from && PositionEmbedding.GridOf(target.Dims[1]) is int to)
                {
                    var resampled = PositionEmbedding.Resample(parts[0]!.ReadFloats(), (int)shape[2], from, to);
                    g.Initializers[src.Ours] = new Tensor(src.Ours, DataType.Float, target.Dims, MemoryMarshal.AsBytes(resampled.AsSpan()).ToArray());
                    report.Loaded.Add($"{src.Ours} <- '{parts[0]!.Name}'");
                    report.Reshaped.Add($"{src.Ours}: position table resampled bicubically from a {from}x{from} to a {to}x{to} patch grid [{string.Join(", ", shape)}] -> [{string.Join(", ", target.Dims)}] (class token kept)");
                    continue;
                }
                throw new ModelException($"{parts[0]!.File.Path}: tensor {What()} does not fit the model's '{src.Ours}' [{string.Join(", ", target.Dims)}]"
                    + (src.Ours == VitNames.PosEmbedding ? " (the position table is not a square patch grid of this width)" : ""));
            }
            float[] values;
            if (src.IsFused)
            {
                var chunks = parts.Select(t => t!.ReadFloats()).ToList();
                values = new float[chunks.Sum(c => c.Length)];
                int at = 0;
                foreach (var c in chunks) { c.CopyTo(values, at); at += c.Length; }
            }
            else values = parts[0]!.ReadFloats();
            g.Initializers[src.Ours] = new Tensor(src.Ours, DataType.Float, target.Dims, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
            report.Loaded.Add($"{src.Ours} <- {(src.IsFused ? string.Join(" + ", src.Keys.Select(k => $"'{k}'")) : $"'{parts[0]!.Name}'")}");
        }

        var unknown = new List<CheckpointTensor>();
        foreach (var t in ckpt.Tensors.Values.Where(t => !used.Contains(t.Name)).OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            if (map.Ignorable(map.Canonical(t.Name))) report.Unexpected.Add($"'{t.Name}' {t.ShapeText}: not used by the classifier (ignored)");
            else unknown.Add(t);
        }
        if (unknown.Count > 0)
            throw new ModelException($"{unknown[0].File.Path}: tensor '{unknown[0].Name}' {unknown[0].ShapeText} is not a parameter of a {NameMap.Name(map.Naming)} ViT classifier"
                + (unknown.Count > 1 ? $" (nor are {unknown.Count - 1} more: {string.Join(", ", unknown.Skip(1).Take(5).Select(t => $"'{t.Name}'"))}{(unknown.Count > 6 ? ", ..." : "")})" : "")
                + "; is it another architecture, or another naming (--weights-format)?");
        report.Notes.Add($"LayerNorm epsilon of the model: {config.LayerNormEpsilon.ToString("G3", CultureInfo.InvariantCulture)}");
        return report;
    }
}
