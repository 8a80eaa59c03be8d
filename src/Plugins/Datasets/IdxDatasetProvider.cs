using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>
/// MNIST-style datasets in IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
/// t10k-labels-idx1-ubyte in DataDir, each optionally gzip-compressed with a .gz suffix (the ".idx3-ubyte" spelling
/// is accepted too). The validation split is carved from the training set (ValidationFraction).
/// </summary>
public class IdxDatasetProvider : IDatasetProvider
{
    private readonly string[] _classNames;
    private readonly string _defaultDir;

    public IdxDatasetProvider(string name, string description, string defaultDir, string[] classNames)
    {
        Name = name; Description = description; _defaultDir = defaultDir; _classNames = classNames;
    }

    public string Name { get; }
    public string Description { get; }
    public string DefaultDataDir => _defaultDir;

    public DatasetSplits Open(DatasetRequest request)
    {
        string dir = request.DataDir ?? _defaultDir;
        if (!Directory.Exists(dir))
            throw new DatasetException($"{dir}: data folder for '{Name}' not found (expected the IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])");
        var train = LoadPair(dir, "train", "train");
        var test = LoadPair(dir, "t10k", "test");
        return Splits.Build(Name, request, train, null, test, Splits.CommonSquareSize(train, test));
    }

    public static string FindFile(string dir, string prefix, string kind)
    {
        string[] candidates =
        {
            $"{prefix}-{kind}-ubyte", $"{prefix}-{kind}-ubyte.gz",
            $"{prefix}-{kind.Replace("-idx", ".idx")}-ubyte", $"{prefix}-{kind.Replace("-idx", ".idx")}-ubyte.gz",
        };
        foreach (var c in candidates)
        {
            var p = Path.Combine(dir, c);
            if (File.Exists(p)) return p;
        }
        throw new DatasetException($"{Path.Combine(dir, candidates[0])}: file not found (also looked for {string.Join(", ", candidates[1..])})");
    }

    private InMemoryImageDataset LoadPair(string dir, string prefix, string split)
    {
        string imagesPath = FindFile(dir, prefix, "images-idx3");
        string labelsPath = FindFile(dir, prefix, "labels-idx1");
        var labels = IdxReader.Read(labelsPath, 1);
        var images = IdxReader.Read(imagesPath, 3);
        int count = images.Dims[0], rows = images.Dims[1], cols = images.Dims[2];
        if (count == 0) throw new DatasetException($"{imagesPath}: contains no images");
        if (rows == 0 || cols == 0) throw new DatasetException($"{imagesPath}: image size {rows}x{cols} is empty");
        if (labels.Dims[0] != count)
            throw new DatasetException($"{labelsPath}: {labels.Dims[0]} labels, but {imagesPath} has {count} images");
        for (int i = 0; i < labels.Data.Length; i++)
            if (labels.Data[i] >= _classNames.Length)
                throw new DatasetException($"{labelsPath}: label {labels.Data[i]} of record {i} is out of range (the dataset has {_classNames.Length} classes)");
        return new InMemoryImageDataset($"{Name}/{split}-all", _classNames, cols, rows, 1,
            images.Data, 0, rows * cols, 0, planar: false, labels.Data, 0, 1, count, Path.GetFileName(imagesPath));
    }
}

public sealed class MnistProvider : IdxDatasetProvider
{
    public MnistProvider() : base("mnist", "MNIST handwritten digits (IDX files, optionally .gz), 28x28 grayscale, 10 classes",
        "/usr/share/datasets/mnist", Enumerable.Range(0, 10).Select(i => i.ToString()).ToArray()) { }
}

public sealed class FashionMnistProvider : IdxDatasetProvider
{
    public static readonly string[] Classes =
        { "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot" };

    public FashionMnistProvider() : base("fashion-mnist", "Fashion-MNIST (IDX files, optionally .gz; default folder is Debian's dataset-fashion-mnist), 28x28 grayscale, 10 classes",
        "/usr/share/datasets/fashion-mnist", Classes) { }
}
