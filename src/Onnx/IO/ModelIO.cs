using Google.Protobuf;
using Onnx;
using System.Runtime.InteropServices;

namespace OrtFinetune.Onnx;

/// <summary>How <see cref="ModelIO.Save"/> writes tensors: inline, or to an external data file beside the model.</summary>
public sealed record SaveOptions
{
    /// <summary>Write tensors to an external data file when the model's initializers exceed this many bytes.</summary>
    public long ExternalDataAboveBytes { get; init; } = 1L << 30;
    /// <summary>Tensors smaller than this stay inline even when external data is used.</summary>
    public long ExternalMinTensorBytes { get; init; } = 1024;
    /// <summary>Force external data regardless of size.</summary>
    public bool ForceExternalData { get; init; }
}

/// <summary>Loads and saves ONNX models to and from the IR. The only place that touches protobuf.</summary>
public static class ModelIO
{
    /// <summary>Largest tensor element count accepted from a file (guards absurd dimensions).</summary>
    public const long MaxElements = 1L << 34;

    /// <summary>Loads a model file, with its external data (relative to the file's folder); errors name the file.</summary>
    public static Model Load(string path)
    {
        if (!File.Exists(path)) throw new OnnxFormatException($"{path}: file not found");
        ModelProto proto;
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
            var cis = new CodedInputStream(fs);
            proto = ModelProto.Parser.ParseFrom(cis);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new OnnxFormatException($"{path}: not a valid ONNX model (protobuf error: {e.Message})", e);
        }
        if (proto.Graph == null || (proto.Graph.Node.Count == 0 && proto.Graph.Input.Count == 0 && proto.Graph.Initializer.Count == 0 && proto.Graph.Output.Count == 0))
            throw new OnnxFormatException($"{path}: not a valid ONNX model (no graph)");
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        try { return FromProto(proto, dir); }
        catch (OnnxFormatException e) { throw new OnnxFormatException($"{path}: {e.Message}", e); }
    }

    /// <summary>Reads a serialized model; external data is looked up in <paramref name="externalDataDir"/>.</summary>
    public static Model FromBytes(byte[] bytes, string? externalDataDir = null)
    {
        ModelProto proto;
        try { proto = ModelProto.Parser.ParseFrom(bytes); }
        catch (InvalidProtocolBufferException e) { throw new OnnxFormatException($"not a valid ONNX model (protobuf error: {e.Message})", e); }
        return FromProto(proto, externalDataDir);
    }

    /// <summary>Converts a protobuf model to the IR; external data is looked up in <paramref name="dir"/>.</summary>
    public static Model FromProto(ModelProto proto, string? dir)
    {
        if (proto.Graph == null) throw new OnnxFormatException("not a valid ONNX model (no graph)");
        var m = new Model { IrVersion = proto.IrVersion, ProducerName = proto.ProducerName, ProducerVersion = proto.ProducerVersion };
        m.Opsets.Clear();
        foreach (var o in proto.OpsetImport) m.Opsets[Node.NormalizeDomain(o.Domain)] = o.Version;
        if (!m.Opsets.ContainsKey("")) m.Opsets[""] = 1;
        foreach (var p in proto.MetadataProps) m.Metadata[p.Key] = p.Value;
        m.Graph = ReadGraph(proto.Graph, dir);
        return m;
    }

    static Graph ReadGraph(GraphProto gp, string? dir)
    {
        var g = new Graph { Name = gp.Name };
        foreach (var t in gp.Initializer) g.Initializers[t.Name] = ReadTensor(t, dir);
        var initNames = g.Initializers.Keys.ToHashSet();
        foreach (var vi in gp.Input)
            if (!initNames.Contains(vi.Name)) g.Inputs.Add(new ValueInfo(vi.Name, ReadType(vi)));
        foreach (var vi in gp.Output) g.Outputs.Add(new ValueInfo(vi.Name, ReadType(vi)));
        foreach (var vi in gp.ValueInfo) g.ValueTypes[vi.Name] = ReadType(vi);
        foreach (var np in gp.Node)
        {
            var n = new Node(np.OpType, np.Input, np.Output, np.Name, np.Domain);
            foreach (var a in np.Attribute) n.Attributes[a.Name] = ReadAttribute(a, dir, n);
            g.Nodes.Add(n);
        }
        return g;
    }

    static TensorType ReadType(ValueInfoProto vi)
    {
        if (vi.Type == null || vi.Type.ValueCase != TypeProto.ValueOneofCase.TensorType)
            return new TensorType(DataType.Undefined, null);
        var tt = vi.Type.TensorType;
        Dim[]? shape = tt.Shape == null ? null : tt.Shape.Dim.Select(d =>
            d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? new Dim(d.DimValue)
            : new Dim(d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam ? d.DimParam : null)).ToArray();
        return new TensorType((DataType)tt.ElemType, shape);
    }

    static NodeAttribute ReadAttribute(AttributeProto a, string? dir, Node n)
    {
        try
        {
            return a.Type switch
            {
                AttributeProto.Types.AttributeType.Float => NodeAttribute.Of(a.Name, a.F),
                AttributeProto.Types.AttributeType.Int => NodeAttribute.Of(a.Name, a.I),
                AttributeProto.Types.AttributeType.String => NodeAttribute.Of(a.Name, a.S.ToStringUtf8()),
                AttributeProto.Types.AttributeType.Floats => NodeAttribute.Of(a.Name, a.Floats.ToArray()),
                AttributeProto.Types.AttributeType.Ints => NodeAttribute.Of(a.Name, a.Ints.ToArray()),
                AttributeProto.Types.AttributeType.Strings => new NodeAttribute(a.Name, AttributeKind.Strings) { Strings = a.Strings.Select(s => s.ToStringUtf8()).ToArray() },
                AttributeProto.Types.AttributeType.Tensor => NodeAttribute.Of(a.Name, ReadTensor(a.T ?? throw new OnnxFormatException($"attribute '{a.Name}' of type TENSOR holds no tensor"), dir)),
                AttributeProto.Types.AttributeType.Graph => new NodeAttribute(a.Name, AttributeKind.Graph) { G = ReadGraph(a.G ?? throw new OnnxFormatException($"attribute '{a.Name}' of type GRAPH holds no graph"), dir) },
                _ => throw new OnnxFormatException($"attribute '{a.Name}' has unsupported type {a.Type}"),
            };
        }
        catch (OnnxFormatException e) when (!e.Message.Contains(" node '"))
        {
            throw new OnnxFormatException($"{n.Describe()}: {e.Message}", e);
        }
    }

    /// <summary>Converts a protobuf tensor (inline or external data under <paramref name="dir"/>), checking its size.</summary>
    public static Tensor ReadTensor(TensorProto t, string? dir)
    {
        var type = (DataType)t.DataType;
        var dims = t.Dims.ToArray();
        long n = 1;
        foreach (var d in dims)
        {
            if (d < 0) throw new OnnxFormatException($"tensor '{t.Name}' has a negative dimension {d}");
            if (d > 0 && n > MaxElements / d) throw new OnnxFormatException($"tensor '{t.Name}' has absurd dimensions [{string.Join(",", dims)}]");
            n *= d;
        }
        if (type == DataType.String)
            return new Tensor(t.Name, type, dims, ReadOnlyMemory<byte>.Empty, t.StringData.Select(s => s.ToByteArray()).ToList());
        int size = type.SizeOf();
        if (size == 0) throw new OnnxFormatException($"tensor '{t.Name}' has unsupported data type {t.DataType}");
        if (t.DataLocation == TensorProto.Types.DataLocation.External)
            return new Tensor(t.Name, type, dims, ReadExternal(t, dir, n * size));
        if (!t.RawData.IsEmpty || n == 0)
        {
            if (t.RawData.Length != n * size)
                throw new OnnxFormatException($"tensor '{t.Name}' has {t.RawData.Length} bytes of raw data, expected {n * size} for {type.OnnxName()}[{string.Join(",", dims)}]");
            return new Tensor(t.Name, type, dims, t.RawData.Memory);
        }
        byte[] raw = type switch
        {
            DataType.Float => Bytes(t.FloatData.ToArray()),
            DataType.Double => Bytes(t.DoubleData.ToArray()),
            DataType.Int64 => Bytes(t.Int64Data.ToArray()),
            DataType.UInt64 => Bytes(t.Uint64Data.ToArray()),
            DataType.UInt32 => Bytes(t.Uint64Data.Select(x => (uint)x).ToArray()),
            DataType.Int32 => Bytes(t.Int32Data.ToArray()),
            DataType.Float16 or DataType.BFloat16 or DataType.UInt16 or DataType.Int16 => Bytes(t.Int32Data.Select(x => (ushort)x).ToArray()),
            DataType.Int8 or DataType.UInt8 or DataType.Bool => t.Int32Data.Select(x => (byte)x).ToArray(),
            _ => throw new OnnxFormatException($"tensor '{t.Name}' has unsupported data type {type}"),
        };
        if (raw.Length != n * size)
            throw new OnnxFormatException($"tensor '{t.Name}' holds {raw.Length / size} values, expected {n} for [{string.Join(",", dims)}]");
        return new Tensor(t.Name, type, dims, raw);
    }

    static byte[] Bytes<T>(T[] a) where T : unmanaged => MemoryMarshal.AsBytes(a.AsSpan()).ToArray();

    static byte[] ReadExternal(TensorProto t, string? dir, long expected)
    {
        var kv = t.ExternalData.ToDictionary(e => e.Key, e => e.Value);
        if (!kv.TryGetValue("location", out var loc) || string.IsNullOrEmpty(loc))
            throw new OnnxFormatException($"tensor '{t.Name}' is stored externally but names no location");
        if (dir == null) throw new OnnxFormatException($"tensor '{t.Name}' is stored externally in '{loc}' but the model was not loaded from a file");
        if (Path.IsPathRooted(loc) || loc.Split('/', '\\').Contains(".."))
            throw new OnnxFormatException($"tensor '{t.Name}': external data location '{loc}' points outside the model's folder");
        var full = Path.GetFullPath(Path.Combine(dir, loc));
        var root = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
        if (!full.StartsWith(root, StringComparison.Ordinal))
            throw new OnnxFormatException($"tensor '{t.Name}': external data location '{loc}' points outside the model's folder");
        if (!File.Exists(full)) throw new OnnxFormatException($"tensor '{t.Name}': external data file '{loc}' not found next to the model");
        long offset = kv.TryGetValue("offset", out var os) ? ParseLong(os, t.Name, "offset") : 0;
        long length = kv.TryGetValue("length", out var ls) ? ParseLong(ls, t.Name, "length") : expected;
        if (length != expected) throw new OnnxFormatException($"tensor '{t.Name}': external length {length} bytes, expected {expected}");
        using var fs = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read);
        if (offset < 0 || offset + length > fs.Length)
            throw new OnnxFormatException($"tensor '{t.Name}': external range [{offset}, {offset + length}) is outside '{loc}' ({fs.Length} bytes)");
        if (length > int.MaxValue) throw new OnnxFormatException($"tensor '{t.Name}' is larger than 2 GB, which is not supported");
        var buf = new byte[length];
        fs.Seek(offset, SeekOrigin.Begin);
        fs.ReadExactly(buf);
        return buf;
    }

    static long ParseLong(string s, string tensor, string field) =>
        long.TryParse(s, out var v) ? v : throw new OnnxFormatException($"tensor '{tensor}': external data {field} '{s}' is not a number");

    // ---------------------------------------------------------------- save

    /// <summary>
    /// Saves atomically: writes to a temporary file next to <paramref name="path"/>, flushes it, then
    /// renames it over the target. External data (if any) goes to "&lt;file name&gt;.data" beside it.
    /// </summary>
    public static void Save(Model m, string path, SaveOptions? options = null)
    {
        options ??= new SaveOptions();
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        long total = m.Graph.Initializers.Values.Sum(t => (long)t.RawData.Length);
        bool external = options.ForceExternalData || total > options.ExternalDataAboveBytes;
        string dataName = Path.GetFileName(full) + ".data";
        string tmpData = full + ".data.tmp";
        FileStream? data = external ? new FileStream(tmpData, FileMode.Create, FileAccess.Write) : null;
        try
        {
            var proto = ToProto(m, data, dataName, options.ExternalMinTensorBytes);
            if (data != null) { data.Flush(true); data.Dispose(); data = null; }
            var tmp = full + ".tmp";
            try
            {
                using var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write);
                using (var cos = new CodedOutputStream(fs, true)) proto.WriteTo(cos);
                fs.Flush(true);
            }
            catch
            {
                try { File.Delete(tmp); } catch (IOException) { }
                throw;
            }
            if (external) File.Move(tmpData, Path.Combine(Path.GetDirectoryName(full)!, dataName), true);
            File.Move(tmp, full, true);
        }
        finally
        {
            data?.Dispose();
            if (File.Exists(tmpData)) File.Delete(tmpData);
        }
    }

    /// <summary>The model serialized with every tensor inline.</summary>
    public static byte[] ToBytes(Model m) => ToProto(m, null, "", 0).ToByteArray();

    static ModelProto ToProto(Model m, FileStream? data, string dataName, long minExternal)
    {
        var p = new ModelProto { IrVersion = m.IrVersion, ProducerName = m.ProducerName, ProducerVersion = m.ProducerVersion };
        foreach (var (d, v) in m.Opsets) p.OpsetImport.Add(new OperatorSetIdProto { Domain = d, Version = v });
        foreach (var (k, v) in m.Metadata) p.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        p.Graph = WriteGraph(m.Graph, data, dataName, minExternal);
        return p;
    }

    static GraphProto WriteGraph(Graph g, FileStream? data, string dataName, long minExternal)
    {
        var gp = new GraphProto { Name = g.Name };
        foreach (var t in g.Initializers.Values) gp.Initializer.Add(WriteTensor(t, data, dataName, minExternal));
        foreach (var i in g.Inputs) gp.Input.Add(WriteValueInfo(i.Name, i.Type));
        foreach (var o in g.Outputs) gp.Output.Add(WriteValueInfo(o.Name, o.Type));
        var boundary = g.Inputs.Select(i => i.Name).Concat(g.Outputs.Select(o => o.Name)).Concat(g.Initializers.Keys).ToHashSet();
        foreach (var (name, type) in g.ValueTypes)
            if (!boundary.Contains(name) && type.ElemType != DataType.Undefined) gp.ValueInfo.Add(WriteValueInfo(name, type));
        foreach (var n in g.Nodes)
        {
            var np = new NodeProto { OpType = n.OpType, Domain = n.Domain, Name = n.Name };
            np.Input.AddRange(n.Inputs);
            np.Output.AddRange(n.Outputs);
            foreach (var a in n.Attributes.Values) np.Attribute.Add(WriteAttribute(a, data, dataName, minExternal));
            gp.Node.Add(np);
        }
        return gp;
    }

    static ValueInfoProto WriteValueInfo(string name, TensorType t)
    {
        if (t.ElemType == DataType.Undefined) return new ValueInfoProto { Name = name };
        var tt = new TypeProto.Types.Tensor { ElemType = (int)t.ElemType };
        if (t.Shape != null)
        {
            tt.Shape = new TensorShapeProto();
            foreach (var d in t.Shape)
            {
                var dim = new TensorShapeProto.Types.Dimension();
                if (d.Value.HasValue) dim.DimValue = d.Value.Value;
                else if (d.Symbol != null) dim.DimParam = d.Symbol;
                tt.Shape.Dim.Add(dim);
            }
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tt } };
    }

    static AttributeProto WriteAttribute(NodeAttribute a, FileStream? data, string dataName, long minExternal)
    {
        var p = new AttributeProto { Name = a.Name };
        switch (a.Kind)
        {
            case AttributeKind.Float: p.Type = AttributeProto.Types.AttributeType.Float; p.F = a.F; break;
            case AttributeKind.Int: p.Type = AttributeProto.Types.AttributeType.Int; p.I = a.I; break;
            case AttributeKind.String: p.Type = AttributeProto.Types.AttributeType.String; p.S = ByteString.CopyFromUtf8(a.S); break;
            case AttributeKind.Floats: p.Type = AttributeProto.Types.AttributeType.Floats; p.Floats.AddRange(a.Floats); break;
            case AttributeKind.Ints: p.Type = AttributeProto.Types.AttributeType.Ints; p.Ints.AddRange(a.Ints); break;
            case AttributeKind.Strings: p.Type = AttributeProto.Types.AttributeType.Strings; p.Strings.AddRange(a.Strings.Select(ByteString.CopyFromUtf8)); break;
            case AttributeKind.Tensor: p.Type = AttributeProto.Types.AttributeType.Tensor; p.T = WriteTensor(a.T!, null, "", 0); break;
            case AttributeKind.Graph: p.Type = AttributeProto.Types.AttributeType.Graph; p.G = WriteGraph(a.G!, data, dataName, minExternal); break;
        }
        return p;
    }

    static TensorProto WriteTensor(Tensor t, FileStream? data, string dataName, long minExternal)
    {
        var p = new TensorProto { Name = t.Name, DataType = (int)t.Type };
        p.Dims.AddRange(t.Dims);
        if (t.Type == DataType.String)
        {
            p.StringData.AddRange(t.Strings!.Select(s => ByteString.CopyFrom(s)));
            return p;
        }
        if (data != null && t.RawData.Length >= minExternal)
        {
            long pad = (64 - data.Position % 64) % 64;
            if (pad > 0) data.Write(new byte[pad]);
            long offset = data.Position;
            data.Write(t.RawData.Span);
            p.DataLocation = TensorProto.Types.DataLocation.External;
            p.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = dataName });
            p.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString() });
            p.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = t.RawData.Length.ToString() });
            return p;
        }
        p.RawData = UnsafeByteOperations.UnsafeWrap(t.RawData);
        return p;
    }
}
