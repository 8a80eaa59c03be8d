using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>One tensor of a safetensors file: dtype name, shape and byte range within the data section.</summary>
public sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
    public long ByteLength => End - Begin;
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>
/// A validated safetensors file: an 8-byte little-endian header length, a UTF-8 JSON header
/// <c>{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}</c>, then the
/// data section. Offsets are relative to the data section and must tile it exactly (sorted, no overlap,
/// no holes), as the reference implementation requires. Tensor data is read on demand.
/// </summary>
public sealed class SafetensorsFile
{
    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>File offset of the data section.</summary>
    public long DataStart { get; }

    internal SafetensorsFile(string path, Dictionary<string, SafetensorsEntry> tensors, Dictionary<string, string> metadata, long dataStart)
    {
        Path = path; Tensors = tensors; Metadata = metadata; DataStart = dataStart;
    }

    public SafetensorsEntry Get(string name) =>
        Tensors.TryGetValue(name, out var e) ? e : throw new ModelException($"{Path}: no tensor '{name}'");

    /// <summary>The tensor's values converted to float32 (from F32, F16, BF16 or F64).</summary>
    public float[] ReadFloats(string name)
    {
        var e = Get(name);
        if (!SafetensorsReader.IsFloat(e.DType))
            throw new ModelException($"{Path}: tensor '{name}' has dtype {e.DType}; only F32, F16, BF16 and F64 convert to float32");
        if (e.ElementCount > Array.MaxLength)
            throw new ModelException($"{Path}: tensor '{name}' {e.ShapeText} is too large to load");
        var bytes = ReadBytes(e);
        var result = new float[e.ElementCount];
        switch (e.DType)
        {
            case "F32":
                MemoryMarshal.Cast<byte, float>(bytes).CopyTo(result);
                if (!BitConverter.IsLittleEndian) for (int i = 0; i < result.Length; i++) result[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(4 * i));
                break;
            case "F16":
                for (int i = 0; i < result.Length; i++) result[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(bytes.AsSpan(2 * i));
                break;
            case "BF16":
                for (int i = 0; i < result.Length; i++) result[i] = BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(2 * i)) << 16);
                break;
            case "F64":
                for (int i = 0; i < result.Length; i++) result[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(bytes.AsSpan(8 * i));
                break;
        }
        return result;
    }

    /// <summary>The raw little-endian bytes of one tensor.</summary>
    public byte[] ReadBytes(SafetensorsEntry e)
    {
        var buf = new byte[e.ByteLength];
        try
        {
            using var fs = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            if (fs.Length < DataStart + e.End)
                throw new ModelException($"{Path}: tensor '{e.Name}' ends at byte {DataStart + e.End} but the file now has {fs.Length} bytes (was it changed while loading?)");
            fs.Seek(DataStart + e.Begin, SeekOrigin.Begin);
            fs.ReadExactly(buf);
        }
        catch (IOException ex)
        {
            throw new ModelException($"{Path}: cannot read tensor '{e.Name}': {ex.Message}", ex);
        }
        return buf;
    }
}

public static class SafetensorsReader
{
    /// <summary>Largest header accepted (the reference implementation's limit).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    static readonly Dictionary<string, int> DTypeSizes = new()
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2,
        ["I64"] = 8, ["U64"] = 8, ["I32"] = 4, ["U32"] = 4, ["I16"] = 2, ["U16"] = 2,
        ["I8"] = 1, ["U8"] = 1, ["BOOL"] = 1, ["F8_E4M3"] = 1, ["F8_E5M2"] = 1,
    };

    public static bool IsFloat(string dtype) => dtype is "F32" or "F16" or "BF16" or "F64";

    /// <summary>Opens and validates a file; every problem is a <see cref="ModelException"/> naming the file (and tensor).</summary>
    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new ModelException($"{path}: weights file not found");
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            long fileLength = fs.Length;
            if (fileLength < 8) throw Bad(path, $"file is {fileLength} bytes, shorter than the 8-byte header length");
            Span<byte> lenBytes = stackalloc byte[8];
            fs.ReadExactly(lenBytes);
            ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
            if (headerLen < 2) throw Bad(path, $"header length {headerLen} is too small for a JSON object");
            if (headerLen > (ulong)(fileLength - 8))
                throw Bad(path, $"header length {headerLen} exceeds the {fileLength - 8} bytes after the length field");
            if (headerLen > MaxHeaderBytes) throw Bad(path, $"header length {headerLen} exceeds the {MaxHeaderBytes}-byte limit");
            var header = new byte[(int)headerLen];
            fs.ReadExactly(header);
            return Parse(path, header, 8 + (long)headerLen, fileLength - 8 - (long)headerLen);
        }
        catch (IOException e)
        {
            throw new ModelException($"{path}: cannot read safetensors file: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new ModelException($"{path}: cannot read safetensors file: {e.Message}", e);
        }
    }

    static ModelException Bad(string path, string what, Exception? inner = null) =>
        new($"{path}: not a valid safetensors file: {what}", inner);

    static SafetensorsFile Parse(string path, byte[] header, long dataStart, long dataLength)
    {
        string text;
        try { text = new UTF8Encoding(false, true).GetString(header); }
        catch (DecoderFallbackException e) { throw Bad(path, "header is not valid UTF-8", e); }
        if (text.Length == 0 || text[0] != '{') throw Bad(path, "header does not start with '{'");

        JsonDocument doc;
        try { doc = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw Bad(path, $"header is not valid JSON ({e.Message})", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, "header is not a JSON object");
            var tensors = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (sawMetadata) throw Bad(path, "header has two \"__metadata__\" entries");
                    sawMetadata = true;
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad(path, "\"__metadata__\" is not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"\"__metadata__\" value '{m.Name}' is not a string");
                        if (!metadata.TryAdd(m.Name, m.Value.GetString()!)) throw Bad(path, $"\"__metadata__\" key '{m.Name}' appears twice");
                    }
                    continue;
                }
                if (tensors.ContainsKey(prop.Name)) throw Bad(path, $"tensor '{prop.Name}' appears twice in the header");
                tensors[prop.Name] = ParseEntry(path, prop.Name, prop.Value);
            }

            // Offsets must tile the data section: sorted by begin, each starting where the previous ended.
            long expected = 0;
            string? previous = null;
            foreach (var e in tensors.Values.OrderBy(e => e.Begin).ThenBy(e => e.End))
            {
                if (e.Begin < expected)
                    throw Bad(path, $"tensor '{e.Name}' (bytes {e.Begin}..{e.End}) overlaps tensor '{previous}' (ends at {expected})");
                if (e.Begin > expected)
                    throw Bad(path, $"tensor '{e.Name}' starts at byte {e.Begin} but the previous tensor{(previous == null ? "s end" : $" '{previous}' ends")} at {expected} (holes are not allowed)");
                expected = e.End;
                previous = e.Name;
            }
            foreach (var e in tensors.Values)
                if (e.End > dataLength)
                    throw Bad(path, $"tensor '{e.Name}' data_offsets [{e.Begin}, {e.End}] run past the {dataLength}-byte data section (is the file truncated?)");
            if (expected != dataLength)
                throw Bad(path, $"the tensors cover {expected} bytes but the data section has {dataLength}");
            return new SafetensorsFile(path, tensors, metadata, dataStart);
        }
    }

    static SafetensorsEntry ParseEntry(string path, string name, JsonElement v)
    {
        ModelException E(string what) => Bad(path, $"tensor '{name}': {what}");
        if (v.ValueKind != JsonValueKind.Object) throw E("entry is not an object");
        string? dtype = null; long[]? shape = null; long[]? offsets = null;
        foreach (var p in v.EnumerateObject())
        {
            switch (p.Name)
            {
                case "dtype":
                    if (dtype != null) throw E("\"dtype\" appears twice");
                    if (p.Value.ValueKind != JsonValueKind.String) throw E("\"dtype\" is not a string");
                    dtype = p.Value.GetString()!;
                    break;
                case "shape":
                    if (shape != null) throw E("\"shape\" appears twice");
                    shape = ReadInts(p.Value, "shape", E);
                    break;
                case "data_offsets":
                    if (offsets != null) throw E("\"data_offsets\" appears twice");
                    offsets = ReadInts(p.Value, "data_offsets", E);
                    break;
                default:
                    throw E($"unknown field \"{p.Name}\"");
            }
        }
        if (dtype == null) throw E("missing \"dtype\"");
        if (shape == null) throw E("missing \"shape\"");
        if (offsets == null) throw E("missing \"data_offsets\"");
        if (!DTypeSizes.TryGetValue(dtype, out int size)) throw E($"unknown dtype '{dtype}' (known: {string.Join(", ", DTypeSizes.Keys)})");
        if (offsets.Length != 2) throw E($"\"data_offsets\" has {offsets.Length} values, not 2");
        long begin = offsets[0], end = offsets[1];
        if (end < begin) throw E($"data_offsets [{begin}, {end}] end before they begin");
        // Shape entries are at most 2^53; stop multiplying once past the available bytes, so Int128 never overflows.
        Int128 bytes = shape.Contains(0) ? 0 : size;
        bool partial = false;
        foreach (var d in shape)
        {
            if (bytes > end - begin) { partial = true; break; }
            bytes *= d;
        }
        if (bytes != end - begin)
            throw E($"shape [{string.Join(", ", shape)}] of {dtype} needs {(partial ? "more than " + (end - begin) : bytes.ToString())} bytes but data_offsets [{begin}, {end}] hold {end - begin}");
        return new SafetensorsEntry(name, dtype, shape, begin, end);
    }

    static long[] ReadInts(JsonElement v, string field, Func<string, ModelException> error)
    {
        if (v.ValueKind != JsonValueKind.Array) throw error($"\"{field}\" is not an array");
        int n = v.GetArrayLength();
        if (n > 64) throw error($"\"{field}\" has {n} entries");
        var r = new long[n];
        int i = 0;
        foreach (var x in v.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt64(out long k) || k < 0 || k > (1L << 53))
                throw error($"\"{field}\" entry {x.GetRawText()} is not a non-negative integer");
            r[i++] = k;
        }
        return r;
    }
}
