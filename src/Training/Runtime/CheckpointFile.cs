using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// The checkpoint file format (docs/checkpoint.md): "ORTFTCK1", an int64 header length, a UTF-8 JSON
/// header (format version, metadata, tensor table), zero padding to 64 bytes, the tensors' raw
/// little-endian bytes (each 64-byte aligned), and the trailer "ORTFTEND". Written to a temporary file,
/// flushed to disk and renamed over the target, so a crash leaves the previous checkpoint intact.
/// </summary>
public sealed class CheckpointFile
{
    public const int FormatVersion = 1;
    static readonly byte[] Magic = "ORTFTCK1"u8.ToArray();
    static readonly byte[] Trailer = "ORTFTEND"u8.ToArray();
    const int Align = 64;
    const long MaxHeader = 64L << 20;

    /// <summary>Tensors in file order.</summary>
    public List<Tensor> Tensors { get; } = new();
    /// <summary>Free-form metadata (step, learning rate, scaler state, RNG state, data position, ...).</summary>
    public Dictionary<string, string> Meta { get; } = new();

    public Tensor Get(string name, string path) =>
        Tensors.FirstOrDefault(t => t.Name == name) ?? throw new CheckpointException($"{path}: checkpoint has no tensor '{name}'");

    public void Save(string path)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var table = new JsonArray();
        long offset = 0;
        foreach (var t in Tensors)
        {
            offset = (offset + Align - 1) / Align * Align;
            table.Add(new JsonObject
            {
                ["name"] = t.Name, ["dtype"] = (int)t.Type, ["shape"] = new JsonArray(t.Dims.Select(d => (JsonNode)d).ToArray()),
                ["offset"] = offset, ["length"] = t.RawData.Length,
            });
            offset += t.RawData.Length;
        }
        var meta = new JsonObject();
        foreach (var (k, v) in Meta) meta[k] = v;
        var header = new JsonObject { ["format"] = FormatVersion, ["meta"] = meta, ["tensors"] = table };
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        var tmp = $"{full}.tmp-{Environment.ProcessId}";
        RemoveStaleTemporaries(full);
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                fs.Write(Magic);
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(len, headerBytes.Length);
                fs.Write(len);
                fs.Write(headerBytes);
                Pad(fs);
                long dataStart = fs.Position;
                foreach (var t in Tensors)
                {
                    while ((fs.Position - dataStart) % Align != 0) fs.WriteByte(0);
                    fs.Write(t.RawData.Span);
                }
                fs.Write(Trailer);
                fs.Flush(true);
            }
            File.Move(tmp, full, true);
        }
        // ArgumentOutOfRangeException: .NET's report of EFBIG (file larger than the file system or RLIMIT_FSIZE allows).
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentOutOfRangeException)
        {
            TryDelete(tmp);
            throw new CheckpointException($"{full}: could not write the checkpoint ({e.Message}); the previous checkpoint, if any, is unchanged", e);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>Deletes temporary files left by writers that were killed mid-write (their process is gone).</summary>
    static void RemoveStaleTemporaries(string full)
    {
        var dir = Path.GetDirectoryName(full)!;
        foreach (var f in Directory.EnumerateFiles(dir, Path.GetFileName(full) + ".tmp-*"))
        {
            if (!int.TryParse(f[(f.LastIndexOf("-", StringComparison.Ordinal) + 1)..], out var pid) || pid == Environment.ProcessId) continue;
            bool alive;
            try { using var p = System.Diagnostics.Process.GetProcessById(pid); alive = !p.HasExited; }
            catch (ArgumentException) { alive = false; }
            if (!alive) TryDelete(f);
        }
    }

    static void Pad(Stream s) { while (s.Position % Align != 0) s.WriteByte(0); }
    static void TryDelete(string p) { try { File.Delete(p); } catch (IOException) { } }

    public static CheckpointFile Load(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: checkpoint not found");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        long fileLength = fs.Length;
        var head = new byte[16];
        if (fileLength < head.Length + Trailer.Length || fs.Read(head) != head.Length || !head.AsSpan(0, 8).SequenceEqual(Magic))
            throw new CheckpointException($"{path}: not an OrtFinetune checkpoint (bad magic)");
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(head.AsSpan(8));
        if (headerLength <= 0 || headerLength > MaxHeader || 16 + headerLength > fileLength)
            throw new CheckpointException($"{path}: corrupt checkpoint (header length {headerLength})");
        var hb = new byte[headerLength];
        fs.ReadExactly(hb);
        JsonNode? header;
        try { header = JsonNode.Parse(hb); }
        catch (JsonException e) { throw new CheckpointException($"{path}: corrupt checkpoint header ({e.Message})", e); }
        int format;
        try { format = header?["format"]?.GetValue<int>() ?? -1; }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw new CheckpointException($"{path}: corrupt checkpoint header ({e.Message})", e); }
        if (format != FormatVersion)
            throw new CheckpointException($"{path}: checkpoint format version {format} is not supported (this build reads version {FormatVersion})");
        long dataStart = (16 + headerLength + Align - 1) / Align * Align;
        var ck = new CheckpointFile();
        try
        {
            if (header!["meta"] is JsonObject meta)
                foreach (var (k, v) in meta) ck.Meta[k] = v?.GetValue<string>() ?? "";
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new CheckpointException($"{path}: corrupt checkpoint metadata ({e.Message})", e);
        }
        var trailer = new byte[Trailer.Length];
        fs.Seek(fileLength - Trailer.Length, SeekOrigin.Begin);
        fs.ReadExactly(trailer);
        if (!trailer.AsSpan().SequenceEqual(Trailer)) throw new CheckpointException($"{path}: checkpoint is truncated (no end marker)");
        long dataEnd = fileLength - Trailer.Length;
        try
        {
            foreach (var e in header["tensors"]!.AsArray())
            {
                var name = e!["name"]!.GetValue<string>();
                var type = (DataType)e["dtype"]!.GetValue<int>();
                var dims = e["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                long off = e["offset"]!.GetValue<long>(), len = e["length"]!.GetValue<long>();
                long count = 1;
                foreach (var d in dims) { if (d < 0 || (d > 0 && count > ModelIO.MaxElements / d)) throw new CheckpointException($"{path}: tensor '{name}' has invalid shape"); count *= d; }
                if (type.SizeOf() == 0 || len != count * type.SizeOf() || len > int.MaxValue)
                    throw new CheckpointException($"{path}: tensor '{name}' has {len} bytes for {type}[{string.Join(",", dims)}]");
                if (off < 0 || dataStart + off + len > dataEnd)
                    throw new CheckpointException($"{path}: tensor '{name}' lies outside the file (checkpoint truncated or corrupt)");
                var buf = new byte[len];
                fs.Seek(dataStart + off, SeekOrigin.Begin);
                fs.ReadExactly(buf);
                ck.Tensors.Add(new Tensor(name, type, dims, buf));
            }
        }
        catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException or JsonException or OnnxFormatException)
        {
            throw new CheckpointException($"{path}: corrupt checkpoint tensor table ({e.Message})", e);
        }
        return ck;
    }
}

/// <summary>A checkpoint cannot be read or written; the message names the file and the problem.</summary>
public sealed class CheckpointException : Exception
{
    public CheckpointException(string message, Exception? inner = null) : base(message, inner) { }
}
