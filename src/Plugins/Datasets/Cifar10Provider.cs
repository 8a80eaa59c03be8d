using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>
/// CIFAR-10, binary version: data_batch_1.bin .. data_batch_5.bin (those present, at least the first), test_batch.bin,
/// optional batches.meta.txt (class names, one a line). Each record is 1 label byte and 3072 bytes of 32x32 pixels,
/// channel-planar (R, G, B). DataDir may be the folder with the files or its parent holding cifar-10-batches-bin/.
/// </summary>
public sealed class Cifar10Provider : IDatasetProvider
{
    public const int Side = 32;
    public const int ImageBytes = 3 * Side * Side;
    public const int RecordBytes = 1 + ImageBytes;
    public const long MaxFileBytes = 1L << 30;

    public static readonly string[] DefaultClasses =
        { "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck" };

    public string Name => "cifar10";
    public string Description => "CIFAR-10 binary version (data_batch_1..5.bin, test_batch.bin, batches.meta.txt), 32x32 RGB, 10 classes";
    public const string DefaultDataDir = "/usr/share/datasets/cifar10";

    public DatasetSplits Open(DatasetRequest request)
    {
        string dir = request.DataDir ?? DefaultDataDir;
        if (!Directory.Exists(dir)) throw new DatasetException($"{dir}: data folder for 'cifar10' not found (expected data_batch_1.bin .. data_batch_5.bin and test_batch.bin)");
        if (!File.Exists(Path.Combine(dir, "data_batch_1.bin")) && Directory.Exists(Path.Combine(dir, "cifar-10-batches-bin")))
            dir = Path.Combine(dir, "cifar-10-batches-bin");

        var classes = ReadClassNames(Path.Combine(dir, "batches.meta.txt"));
        var trainFiles = new List<string>();
        for (int i = 1; i <= 5; i++)
        {
            var p = Path.Combine(dir, $"data_batch_{i}.bin");
            if (File.Exists(p)) trainFiles.Add(p);
            else if (i == 1) throw new DatasetException($"{p}: file not found");
        }
        var train = Load(trainFiles, classes, "cifar10/train-all");
        var test = Load(new List<string> { Path.Combine(dir, "test_batch.bin") }, classes, "cifar10/test-all");
        return Splits.Build(Name, request, train, null, test, Splits.CommonSquareSize(train, test));
    }

    public static string[] ReadClassNames(string path)
    {
        if (!File.Exists(path)) return DefaultClasses;
        var info = new FileInfo(path);
        if (info.Length > 1 << 20) throw new DatasetException($"{path}: {info.Length} bytes, too large for a class-name list");
        var names = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
        if (names.Length == 0) throw new DatasetException($"{path}: no class names");
        if (names.Length > 256) throw new DatasetException($"{path}: {names.Length} class names; a label byte allows at most 256");
        if (names.Distinct().Count() != names.Length) throw new DatasetException($"{path}: duplicate class names");
        return names;
    }

    /// <summary>Reads one or more batch files into one dataset (records stay in file order).</summary>
    public static InMemoryImageDataset Load(IReadOnlyList<string> files, string[] classes, string name)
    {
        long total = 0;
        var lengths = new long[files.Count];
        for (int f = 0; f < files.Count; f++)
        {
            var path = files[f];
            if (!File.Exists(path)) throw new DatasetException($"{path}: file not found");
            long len = new FileInfo(path).Length;
            if (len == 0) throw new DatasetException($"{path}: file is empty");
            if (len > MaxFileBytes) throw new DatasetException($"{path}: {len} bytes, larger than any CIFAR-10 batch ({MaxFileBytes} bytes accepted)");
            if (len % RecordBytes != 0)
                throw new DatasetException($"{path}: length {len} is not a multiple of the {RecordBytes}-byte record (1 label byte + {ImageBytes} pixel bytes); truncated or not a CIFAR-10 binary batch");
            lengths[f] = len; total += len;
        }
        if (total > int.MaxValue - 64) throw new DatasetException($"{files[0]}..: {total} bytes in all, too large");
        var data = new byte[total];
        long off = 0;
        for (int f = 0; f < files.Count; f++)
        {
            try
            {
                using var fs = new FileStream(files[f], FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
                int want = (int)lengths[f], got = 0;
                while (got < want)
                {
                    int n = fs.Read(data, (int)off + got, want - got);
                    if (n == 0) throw new DatasetException($"{files[f]}: truncated while reading (file shrank?)");
                    got += n;
                }
            }
            catch (IOException e) { throw new DatasetException($"{files[f]}: read error ({e.Message})", e); }
            catch (UnauthorizedAccessException e) { throw new DatasetException($"{files[f]}: access denied ({e.Message})", e); }
            long records = lengths[f] / RecordBytes;
            for (long r = 0; r < records; r++)
            {
                byte label = data[off + r * RecordBytes];
                if (label >= classes.Length)
                    throw new DatasetException($"{files[f]}: label {label} of record {r} is out of range (the dataset has {classes.Length} classes)");
            }
            off += lengths[f];
        }
        int count = (int)(total / RecordBytes);
        var starts = new int[files.Count];
        for (int f = 1; f < files.Count; f++) starts[f] = starts[f - 1] + (int)(lengths[f - 1] / RecordBytes);
        var names = files.Select(Path.GetFileName).ToArray();
        string SourceOf(int i)
        {
            int f = Array.BinarySearch(starts, i);
            if (f < 0) f = ~f - 1;
            return $"{names[f]} record {i - starts[f]}";
        }
        return new InMemoryImageDataset(name, classes, Side, Side, 3, data, 0, RecordBytes, 1, planar: true,
            data, 0, RecordBytes, count, names[0]!, SourceOf);
    }
}
