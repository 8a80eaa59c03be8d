using System.Text.Json;
using System.Text.Json.Nodes;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models.Weights;

/// <summary>One tensor of a checkpoint: the shard it is in and its entry there.</summary>
public sealed record CheckpointTensor(string Name, SafetensorsFile File, SafetensorsEntry Entry)
{
    public long[] Shape => Entry.Shape;
    public string ShapeText => Entry.ShapeText;
    public float[] ReadFloats() => File.ReadFloats(Name);
}

/// <summary>
/// A set of safetensors weights: one file, or shards listed by a Hugging Face index
/// (<c>model.safetensors.index.json</c>: <c>{"weight_map": {tensor: shard file}}</c>), with the
/// <c>config.json</c> (and <c>preprocessor_config.json</c>) found next to them. A folder is opened through its
/// index, else its <c>model.safetensors</c>, else its only <c>*.safetensors</c> file. Every shard is validated
/// on open; every problem is a <see cref="ModelException"/> naming the file (and the tensor).
/// </summary>
public sealed class Checkpoint
{
    /// <summary>What the user gave (file, folder or index).</summary>
    public string Path { get; }
    public IReadOnlyDictionary<string, CheckpointTensor> Tensors { get; }
    public IReadOnlyList<string> Files { get; }
    /// <summary>config.json next to the weights, if any.</summary>
    public JsonObject? Config { get; }
    public string? ConfigPath { get; }
    /// <summary>preprocessor_config.json next to the weights, if any (HF image_mean / image_std).</summary>
    public JsonObject? Preprocessor { get; }

    Checkpoint(string path, Dictionary<string, CheckpointTensor> tensors, List<string> files, JsonObject? config, string? configPath, JsonObject? pre)
    {
        Path = path; Tensors = tensors; Files = files; Config = config; ConfigPath = configPath; Preprocessor = pre;
    }

    public const string IndexName = "model.safetensors.index.json";

    public static Checkpoint Open(string path)
    {
        string? index = null, single = null;
        string dir;
        if (Directory.Exists(path))
        {
            dir = path;
            var idx = System.IO.Path.Combine(path, IndexName);
            var one = System.IO.Path.Combine(path, "model.safetensors");
            if (File.Exists(idx)) index = idx;
            else if (File.Exists(one)) single = one;
            else
            {
                var all = Directory.GetFiles(path, "*.safetensors");
                var indexes = Directory.GetFiles(path, "*.safetensors.index.json");
                if (indexes.Length == 1) index = indexes[0];
                else if (all.Length == 1) single = all[0];
                else throw new ModelException($"{path}: no {IndexName} or model.safetensors in this folder"
                    + (all.Length > 1 ? $", and {all.Length} other .safetensors files (name the file or the index)" : ""));
            }
        }
        else if (File.Exists(path))
        {
            dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
            if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) index = path; else single = path;
        }
        else throw new ModelException($"{path}: weights file or folder not found");

        var tensors = new Dictionary<string, CheckpointTensor>(StringComparer.Ordinal);
        var files = new List<string>();
        if (single != null)
        {
            var f = SafetensorsReader.Open(single);
            files.Add(single);
            foreach (var (name, e) in f.Tensors) tensors[name] = new CheckpointTensor(name, f, e);
        }
        else
        {
            var map = ReadIndex(index!);
            var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var (tensor, shard) in map)
            {
                if (!shards.TryGetValue(shard, out var f))
                {
                    var shardPath = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(index!))!, shard);
                    if (!File.Exists(shardPath))
                        throw new ModelException($"{index}: tensor '{tensor}' is in shard '{shard}', but {shardPath} does not exist");
                    shards[shard] = f = SafetensorsReader.Open(shardPath);
                    files.Add(shardPath);
                }
                if (!f.Tensors.TryGetValue(tensor, out var e))
                    throw new ModelException($"{index}: tensor '{tensor}' is listed in shard '{shard}', but {f.Path} has no such tensor");
                tensors[tensor] = new CheckpointTensor(tensor, f, e);
            }
        }
        var (config, configPath) = ReadJson(System.IO.Path.Combine(dir, "config.json"));
        var (pre, _) = ReadJson(System.IO.Path.Combine(dir, "preprocessor_config.json"));
        return new Checkpoint(path, tensors, files, config, configPath, pre);
    }

    static List<(string Tensor, string Shard)> ReadIndex(string index)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(index)); }
        catch (JsonException e) { throw new ModelException($"{index}: not a valid safetensors index: {e.Message}", e); }
        catch (IOException e) { throw new ModelException($"{index}: cannot read the index: {e.Message}", e); }
        if (root is not JsonObject o || o["weight_map"] is not JsonObject map)
            throw new ModelException($"{index}: not a valid safetensors index: no \"weight_map\" object");
        var r = new List<(string, string)>();
        foreach (var (k, v) in map)
        {
            if (v is not JsonValue jv || !jv.TryGetValue<string>(out var shard) || shard.Length == 0)
                throw new ModelException($"{index}: tensor '{k}' is mapped to {v?.ToJsonString() ?? "null"}, not a shard file name");
            if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                throw new ModelException($"{index}: tensor '{k}' is mapped to '{shard}'; shards must be plain file names next to the index");
            r.Add((k, shard));
        }
        if (r.Count == 0) throw new ModelException($"{index}: the weight_map is empty");
        return r;
    }

    static (JsonObject?, string?) ReadJson(string path)
    {
        if (!File.Exists(path)) return (null, null);
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) is JsonObject o ? (o, path) : throw new ModelException($"{path}: not a JSON object");
        }
        catch (JsonException e) { throw new ModelException($"{path}: not valid JSON: {e.Message}", e); }
        catch (IOException e) { throw new ModelException($"{path}: cannot read: {e.Message}", e); }
    }

    /// <summary>The file a tensor is in (for messages).</summary>
    public string FileOf(string tensor) => Tensors.TryGetValue(tensor, out var t) ? t.File.Path : Path;

    /// <summary>An integer from config.json at one of <paramref name="keys"/> (dotted paths into objects), or null.</summary>
    public int? ConfigInt(params string[] keys) => ConfigNumber(keys) is double d ? (int)d : null;

    public double? ConfigNumber(params string[] keys)
    {
        foreach (var k in keys)
        {
            JsonNode? n = Config;
            foreach (var part in k.Split('.')) n = n is JsonObject o ? o[part] : null;
            if (n is JsonValue v)
            {
                if (v.TryGetValue<double>(out var d)) return d;
                if (v.TryGetValue<int>(out var i)) return i;
                if (v.TryGetValue<long>(out var l)) return l;
                if (v.TryGetValue<string>(out var s) && double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out d)) return d;
            }
        }
        return null;
    }

    public static float[]? Floats(JsonObject? o, params string[] keys)
    {
        foreach (var k in keys)
        {
            JsonNode? n = o;
            foreach (var part in k.Split('.')) n = n is JsonObject obj ? obj[part] : null;
            if (n is JsonArray a && a.Count > 0 && a.All(x => x is JsonValue))
                try { return a.Select(x => (float)x!.GetValue<double>()).ToArray(); } catch (Exception e) when (e is FormatException or InvalidOperationException) { }
        }
        return null;
    }
}
